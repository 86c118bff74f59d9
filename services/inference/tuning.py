"""Choosing a model's batch size from measurement on the device it runs on.

On a GPU larger batches keep paying off; on a CPU they may not. Rather than guess per device,
warm-up times batch sizes 1, 2, 4, ... in the shape the model serves under load (its
``instances`` passes side by side, each on its share of the cores: ``ModelRunner.side_by_side``)
and keeps the smallest size whose cost per image is within noise of the cheapest, among those
whose round of passes fits a latency budget. On a CPU the cost is the CPU time the process spent
(what throughput on busy cores depends on, and what other processes on a shared machine hardly
change); on a GPU, the wall-clock time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Round:
    """One timed round of passes of one batch size."""

    wall_s: float
    """From the first pass's start to the last pass's end."""
    cpu_s: float
    """CPU time the process spent meanwhile (all its threads)."""

    def faster(self, other: Round) -> Round:
        """Each figure's minimum of the two rounds: other work only ever adds time to either."""
        return Round(min(self.wall_s, other.wall_s), min(self.cpu_s, other.cpu_s))


#: Sizes within this fraction of the best throughput count as equally fast (the difference is
#: within measurement noise). The smallest of them wins: it serves as many images per second
#: with a shorter pass, so a caller waits less behind a batch, and on a CPU where a larger batch
#: costs no less per image (efficientnet-lite0 on one thread: docs/inference.md, *Batch size*)
#: the choice is then batch 1, the same work as batching off, never worse than it.
TOLERANCE = 0.05

#: How sizes are timed and chosen, part of the key a measured size is kept under (``batch_sizes``):
#: a size kept by an earlier method is measured again.
METHOD = "side by side, CPU time on a CPU, smallest within 5 %"


def candidate_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (included even when it is not a power of two)."""
    sizes = [1]
    while sizes[-1] * 2 <= largest:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


def choose_batch_size(rounds: Mapping[int, Round], budget_s: float, by_cpu: bool) -> int:
    """Picks the batch size to serve with from measured rounds.

    Args:
        rounds: One round of passes by batch size (the same number of passes for each size).
        budget_s: Longest round (wall clock) allowed; batch size 1 is always allowed.
        by_cpu: Rank by CPU time per image (on a CPU) rather than by wall-clock time (on a GPU).

    Returns:
        The smallest size whose images per second of cost are within TOLERANCE of the best size
        within budget.
    """
    allowed = {size: r for size, r in rounds.items() if size == 1 or r.wall_s <= budget_s}
    throughput = {size: size / (r.cpu_s if by_cpu else r.wall_s) for size, r in allowed.items()}
    best = max(throughput.values())
    return min(size for size, rate in throughput.items() if rate >= best * (1 - TOLERANCE))


def measure_batch_sizes(
    time_batch: Callable[[int], Round], largest: int, budget_s: float, rounds: int = 5
) -> dict[int, Round]:
    """Times each candidate size with ``time_batch(size)``, keeping each size's fastest round
    (wall clock and CPU time each at its minimum).

    One unrecorded sweep first (the first pass of each shape pays one-off allocations), then
    ``rounds`` sweeps that take one round of every size in turn: sizes are interleaved, so load
    from other processes falls on all of them alike instead of spoiling the figures of the one
    size that happened to be timed during a burst. The minimum is kept because other work only
    ever adds time. A size with two rounds over budget (the unrecorded one counts) is dropped with
    every larger one: two samples, so that one burst cannot rule a size out.
    """
    sizes = candidate_sizes(largest)
    cold: dict[int, Round] = {}
    for size in sizes:
        cold[size] = time_batch(size)
        if cold[size].wall_s > 8 * budget_s:  # hopeless even cold: spare the larger sizes
            sizes = [s for s in sizes if s <= size]
            break
    fastest: dict[int, Round] = {}
    for sweep in range(rounds):
        for size in sizes:
            taken = time_batch(size)
            fastest[size] = taken.faster(fastest.get(size, taken))
        over = [
            size
            for size in sizes
            if size > 1 and fastest[size].wall_s > budget_s and (sweep >= 1 or cold[size].wall_s > budget_s)
        ]
        if over:
            sizes = [size for size in sizes if size < min(over)]
    return fastest


def tune_batch_size(
    name: str,
    time_batch: Callable[[int], Round],
    largest: int,
    budget_s: float,
    passes: int = 1,
    by_cpu: bool = False,
) -> int:
    """Measures and chooses ``name``'s batch size, logging every figure.

    Args:
        passes: How many passes ``time_batch`` runs at once (the model's instances): the logged
            figures count the images of all of them.
        by_cpu: Rank sizes by CPU time (see ``choose_batch_size``).
    """
    rounds = measure_batch_sizes(time_batch, largest, budget_s)
    chosen = choose_batch_size(rounds, budget_s, by_cpu)
    figures = ", ".join(
        f"{size}: {r.wall_s * 1000:.0f} ms ({passes * size / r.wall_s:.1f}/s), "
        f"CPU {r.cpu_s * 1000 / (passes * size):.1f} ms/image"
        for size, r in sorted(rounds.items())
    )
    log.info(
        "%s: batch size %d chosen from measurement (%d pass(es) side by side, by %s, budget %.0f ms; %s)",
        name,
        chosen,
        passes,
        "CPU time" if by_cpu else "wall clock",
        budget_s * 1000,
        figures,
    )
    return chosen
