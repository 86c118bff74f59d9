"""Inference service: serves PyTorch models over gRPC with dynamic batching."""
