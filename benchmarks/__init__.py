"""Ferry's benchmarks: each one command printing ratios measured in one run (docs/benchmarks.md)."""

import os

from services.inference import openmp

#: Set in the peers' servers (MLServer, FastAPI), which import this package's modules too.
PEER_PROCESS = "FERRY_BENCH_PEER"

# Before any benchmark imports torch: the in-process rows run the model with the inference
# service's OpenMP settings; the peers' servers keep their own defaults.
if PEER_PROCESS not in os.environ:
    spin_count = os.environ.get("FERRY_INFERENCE_OPENMP_SPIN_COUNT", str(openmp.DEFAULT_SPIN_COUNT))
    openmp.apply(int(spin_count))
