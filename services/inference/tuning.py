"""Choosing a model's batch size from measurement on the device it runs on.

On a GPU larger batches keep paying off; on a CPU they may not. Rather than guess per device,
warm-up times batch sizes 1, 2, 4, ... in the shape the model serves under load (its
``instances`` passes side by side, each on its share of the cores: ``ModelRunner.side_by_side``)
and keeps the smallest size whose throughput is within noise of the best within a latency budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: Sizes within this fraction of the best throughput count as equally fast (the difference is
#: within measurement noise). The smallest of them wins: it serves as many images per second
#: with a shorter pass, so a caller waits less behind a batch, and on a CPU where a larger batch
#: costs no less per image (efficientnet-lite0 on one thread: docs/inference.md, *Batch size*)
#: the choice is then batch 1, the same work as batching off, never worse than it.
TOLERANCE = 0.05

#: How sizes are timed and chosen, part of the key a measured size is kept under (``batch_sizes``):
#: a size kept by an earlier method is measured again.
METHOD = "side by side, smallest within 5 %"


def candidate_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (included even when it is not a power of two)."""
    sizes = [1]
    while sizes[-1] * 2 <= largest:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


def choose_batch_size(seconds: Mapping[int, float], budget_s: float) -> int:
    """Picks the batch size to serve with from measured pass times.

    Args:
        seconds: Time of one round of passes by batch size (the same number of passes for each
            size, so ``size / seconds`` ranks the sizes by throughput).
        budget_s: Longest round allowed; batch size 1 is always allowed.

    Returns:
        The smallest size whose throughput is within TOLERANCE of the best size within budget.
    """
    allowed = {size: t for size, t in seconds.items() if size == 1 or t <= budget_s}
    throughput = {size: size / t for size, t in allowed.items()}
    best = max(throughput.values())
    return min(size for size, rate in throughput.items() if rate >= best * (1 - TOLERANCE))


def measure_batch_sizes(
    time_batch: Callable[[int], float], largest: int, budget_s: float, rounds: int = 5
) -> dict[int, float]:
    """Times each candidate size with ``time_batch(size)``, keeping each size's fastest round.

    One unrecorded sweep first (the first pass of each shape pays one-off allocations), then
    ``rounds`` sweeps that take one round of every size in turn: sizes are interleaved, so load
    from other processes falls on all of them alike instead of spoiling the figures of the one
    size that happened to be timed during a burst. The minimum is kept because other work only
    ever adds time. A size with two rounds over budget (the unrecorded one counts) is dropped with
    every larger one: two samples, so that one burst cannot rule a size out.
    """
    sizes = candidate_sizes(largest)
    cold: dict[int, float] = {}
    for size in sizes:
        cold[size] = time_batch(size)
        if cold[size] > 8 * budget_s:  # hopeless even cold: spare the larger sizes
            sizes = [s for s in sizes if s <= size]
            break
    seconds: dict[int, float] = {}
    for sweep in range(rounds):
        for size in sizes:
            taken = time_batch(size)
            seconds[size] = min(taken, seconds.get(size, taken))
        over = [
            size
            for size in sizes
            if size > 1 and seconds[size] > budget_s and (sweep >= 1 or cold[size] > budget_s)
        ]
        if over:
            sizes = [size for size in sizes if size < min(over)]
    return seconds


def tune_batch_size(
    name: str, time_batch: Callable[[int], float], largest: int, budget_s: float, passes: int = 1
) -> int:
    """Measures and chooses ``name``'s batch size, logging every figure.

    Args:
        passes: How many passes ``time_batch`` runs at once (the model's instances): the logged
            rates count the images of all of them.
    """
    seconds = measure_batch_sizes(time_batch, largest, budget_s)
    chosen = choose_batch_size(seconds, budget_s)
    figures = ", ".join(
        f"{size}: {t * 1000:.0f} ms ({passes * size / t:.1f}/s)" for size, t in sorted(seconds.items())
    )
    log.info(
        "%s: batch size %d chosen from measurement (%d pass(es) side by side, budget %.0f ms; %s)",
        name,
        chosen,
        passes,
        budget_s * 1000,
        figures,
    )
    return chosen
