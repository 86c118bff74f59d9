"""store's own Prometheus metrics."""

from prometheus_client import Counter, Histogram

RECORDS = Counter(
    "ferry_store_records_total",
    "Record events handled by ingest, by outcome (inserted: written, a retried item's re-run included;"
    " duplicate, malformed, refused, retried).",
    ["outcome"],
)
BATCH_SIZE = Histogram(
    "ferry_store_ingest_batch_size",
    "Events written per transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
LAG = Histogram(
    "ferry_store_ingest_lag_seconds",
    "Time from a prediction's creation to its row being committed.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
