"""Prometheus metrics of the inference service, beside the shared gRPC ones."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BATCH_SIZE = Histogram(
    "ferry_inference_batch_size",
    "Items per forward pass, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_WAIT = Histogram(
    "ferry_inference_queue_seconds",
    "Time an item waited in the batching queue before its forward pass started, by model.",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ITEMS = Counter(
    "ferry_inference_items_total",
    "Inputs handled, by model and outcome (ok, invalid_input, expired, error).",
    ["model", "outcome"],
)
REJECTED = Counter(
    "ferry_inference_rejected_total",
    "Inputs refused with RESOURCE_EXHAUSTED because the model's queue was full, by model.",
    ["model"],
)
EXPIRED = Counter(
    "ferry_inference_expired_total",
    "Inputs dropped before running because their caller's deadline had passed, by model.",
    ["model"],
)
