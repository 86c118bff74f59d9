"""Code every Ferry service shares: boot, settings, errors, tracing, metrics, NATS and gRPC helpers."""
