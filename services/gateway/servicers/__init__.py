"""gRPC handlers of the three public services; thin: authenticate, delegate, wrap the answer."""
