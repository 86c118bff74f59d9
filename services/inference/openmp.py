"""The OpenMP settings the inference service starts torch with (see docs/inference.md, *Threads*).

GNU OpenMP reads them once, when torch loads it, so they are set in the environment before torch
is imported: by the service's entry point, and by the benchmarks' own process so that its
in-process rows run the model as the service does.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
VARIABLES = (WAIT_POLICY, SPIN_COUNT)
#: Rounds an idle OpenMP thread spins: FERRY_INFERENCE_OPENMP_SPIN_COUNT's default. None: beside the
#: decode threads and the stack a spinning thread holds the core its partner needs (a two-thread
#: pass burned 57 ms CPU per image at 10,000 rounds against 33 at 0; docs/benchmarks.md).
DEFAULT_SPIN_COUNT = 0


def apply(spin_count: int, environ: MutableMapping[str, str] = os.environ) -> None:
    """Idle OpenMP threads spin ``spin_count`` rounds, then sleep; an explicit setting wins.

    ``active`` only so that GNU OpenMP keeps that spin even when it manages more threads than
    there are cores (each thread that runs forward passes has a team of its own): otherwise it
    spins 1,000 rounds there whatever GOMP_SPINCOUNT says. Set neither when either is set.
    """
    if not any(name in environ for name in VARIABLES):
        environ[WAIT_POLICY] = "active"
        environ[SPIN_COUNT] = str(spin_count)
