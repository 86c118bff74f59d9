"""Choosing a model's batch size from measurement on the device it runs on.

On a 2-core CPU efficientnet-lite0 does best at batch 4 and worse at 8 (FACTS); on a GPU larger
batches keep paying off. Rather than guess per device, warm-up times batch sizes 1, 2, 4, ... and
keeps the best throughput whose forward pass stays within a latency budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: Sizes within this fraction of the best throughput count as equally fast (the difference is
#: within measurement noise). The largest of them wins: serving adds costs per batch that the
#: timing does not see (the queue, the thread hop, answering each caller), which a larger batch
#: spreads over more items, and the latency budget already bounds how long a pass may take.
TOLERANCE = 0.05


def candidate_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (included even when it is not a power of two)."""
    sizes = [1]
    while sizes[-1] * 2 <= largest:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


def choose_batch_size(seconds: Mapping[int, float], budget_s: float) -> int:
    """Picks the batch size to serve with from measured forward-pass times.

    Args:
        seconds: Forward-pass time by batch size.
        budget_s: Longest forward pass allowed; batch size 1 is always allowed.

    Returns:
        The largest size whose throughput is within TOLERANCE of the best size within budget.
    """
    allowed = {size: t for size, t in seconds.items() if size == 1 or t <= budget_s}
    throughput = {size: size / t for size, t in allowed.items()}
    best = max(throughput.values())
    return max(size for size, rate in throughput.items() if rate >= best * (1 - TOLERANCE))


def measure_batch_sizes(
    time_batch: Callable[[int, int], float], largest: int, budget_s: float, rounds: int = 5
) -> dict[int, float]:
    """Times each candidate size with ``time_batch(size, 1)``, keeping each size's fastest pass.

    One unrecorded sweep first (the first pass of each shape pays one-off allocations), then
    ``rounds`` sweeps that take one pass of every size in turn: sizes are interleaved, so load
    from other processes falls on all of them alike instead of spoiling the figures of the one
    size that happened to be timed during a burst. The minimum is kept because other work only
    ever adds time. From the second sweep on, a size whose fastest pass is still over budget is
    dropped with every larger one: two samples, so that one burst cannot rule a size out.
    """
    sizes = candidate_sizes(largest)
    for size in sizes:
        if time_batch(size, 1) > 8 * budget_s:  # hopeless even cold: spare the larger sizes
            sizes = [s for s in sizes if s <= size]
            break
    seconds: dict[int, float] = {}
    for sweep in range(rounds):
        for size in sizes:
            taken = time_batch(size, 1)
            seconds[size] = min(taken, seconds.get(size, taken))
        over = [size for size in sizes if size > 1 and seconds[size] > budget_s]
        if sweep >= 1 and over:
            sizes = [size for size in sizes if size < min(over)]
    return seconds


def tune_batch_size(name: str, time_batch: Callable[[int, int], float], largest: int, budget_s: float) -> int:
    """Measures and chooses ``name``'s batch size, logging every figure."""
    seconds = measure_batch_sizes(time_batch, largest, budget_s)
    chosen = choose_batch_size(seconds, budget_s)
    figures = ", ".join(
        f"{size}: {t * 1000:.0f} ms ({size / t:.1f}/s)" for size, t in sorted(seconds.items())
    )
    log.info(
        "%s: batch size %d chosen from measurement (budget %.0f ms; %s)",
        name,
        chosen,
        budget_s * 1000,
        figures,
    )
    return chosen
