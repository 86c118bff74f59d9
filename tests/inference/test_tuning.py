"""The batch size is chosen from forward passes timed on the device, within a latency budget."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch

from services.inference.models.config import ModelConfig
from services.inference.models.contract import Answer, Item
from services.inference.runner import ModelRunner
from services.inference.service import time_and_choose
from services.inference.tuning import (
    Round,
    candidate_sizes,
    choose_batch_size,
    measure_batch_sizes,
    tune_batch_size,
)
from tests.inference.conftest import RunningInference

# Seconds per forward pass measured on the 2-core CPU (FACTS): batch 4 is the sweet spot.
CPU = {1: 0.027, 2: 0.050, 4: 0.091, 8: 0.250, 16: 0.560}


def walls(seconds: dict[int, float]) -> dict[int, Round]:
    """Rounds by size whose CPU time is their wall-clock time (one pass on one busy core)."""
    return {size: Round(t, t) for size, t in seconds.items()}


# One start-up timing of efficientnet-lite0 (traced) on the 2-core Xeon, both shapes in the same
# minute at load 4-5 (docs/benchmarks.md, session 5): the seconds of one round by batch size.
ONE_TWO_THREAD_PASS = {1: 1 / 50, 2: 2 / 57, 4: 4 / 64, 8: 8 / 47, 16: 16 / 36}
TWO_ONE_THREAD_PASSES = {1: 2 / 54, 2: 4 / 52, 4: 8 / 28, 8: 16 / 26}


# Two one-thread passes side by side while other processes held the cores (load 8): wall seconds
# and CPU seconds of one round by batch size.
SHARED_MACHINE = {1: Round(2 / 54, 2 * 0.0254), 2: Round(4 / 52, 4 * 0.0231), 4: Round(8 / 28, 8 * 0.0236)}


def test_candidates_are_powers_of_two_up_to_the_largest() -> None:
    assert candidate_sizes(16) == [1, 2, 4, 8, 16]
    assert candidate_sizes(12) == [1, 2, 4, 8, 12]
    assert candidate_sizes(1) == [1]


def test_the_best_throughput_wins() -> None:
    assert choose_batch_size(walls(CPU), budget_s=1.0, by_cpu=False) == 4


def test_a_size_over_the_latency_budget_is_not_chosen() -> None:
    gpu = walls({1: 0.004, 2: 0.0045, 4: 0.005, 8: 0.006, 16: 0.009, 32: 0.016})
    assert choose_batch_size(gpu, budget_s=1.0, by_cpu=False) == 32
    assert choose_batch_size(gpu, budget_s=0.010, by_cpu=False) == 16


def test_within_noise_of_the_best_the_smaller_size_wins() -> None:
    # 4 -> 45.0/s, 8 -> 44.0/s: within 5 %, so 4: as many images a second, a shorter wait.
    assert choose_batch_size(walls({1: 0.03, 4: 4 / 45.0, 8: 8 / 44.0}), 1.0, by_cpu=False) == 4
    assert choose_batch_size(walls({1: 0.03, 4: 4 / 40.0, 8: 8 / 44.0}), 1.0, by_cpu=False) == 8
    # 1 -> 43.5/s is within 5 % of 4's 45.0/s: batch 1, the same work as batching off.
    assert choose_batch_size(walls({1: 1 / 43.5, 4: 4 / 45.0, 8: 8 / 40.0}), 1.0, by_cpu=False) == 1


def test_the_shape_served_under_load_decides() -> None:
    # One two-thread pass gains from batch 4 (its OpenMP partner waits less per image); two
    # one-thread passes side by side, how two instances serve under load, do best at batch 1.
    assert choose_batch_size(walls(ONE_TWO_THREAD_PASS), budget_s=0.25, by_cpu=False) == 4
    assert choose_batch_size(walls(TWO_ONE_THREAD_PASSES), budget_s=0.25, by_cpu=False) == 1


def test_on_a_cpu_the_cpu_time_decides_not_the_wall_clock() -> None:
    # Batch 1's rounds happened to be the least delayed (wall), but batch 2 cost the least CPU
    # per image.
    rounds = SHARED_MACHINE
    assert choose_batch_size(rounds, budget_s=0.5, by_cpu=False) == 1
    assert choose_batch_size(rounds, budget_s=0.5, by_cpu=True) == 2
    # The budget still bounds the wall clock: 4's round took 0.29 s.
    cheap_four = {**rounds, 4: Round(8 / 28, 8 * 0.015)}
    assert choose_batch_size(cheap_four, budget_s=0.5, by_cpu=True) == 4
    assert choose_batch_size(cheap_four, budget_s=0.25, by_cpu=True) == 2


def test_size_one_is_kept_even_when_it_is_over_budget() -> None:
    assert choose_batch_size(walls({1: 2.0, 2: 3.0}), budget_s=0.5, by_cpu=False) == 1


def test_timing_stops_at_the_first_size_over_budget() -> None:
    timed: list[int] = []

    def time_batch(size: int) -> Round:
        timed.append(size)
        return Round(CPU[size], CPU[size])

    assert measure_batch_sizes(time_batch, largest=16, budget_s=0.2) == walls(
        {1: 0.027, 2: 0.05, 4: 0.091, 8: 0.25, 16: 0.56}
    )
    # An unrecorded warm-up sweep, then five interleaved sweeps; 8 is over budget in its second
    # sample (the warm-up's was the first), so neither it nor 16 is timed again.
    assert timed == [1, 2, 4, 8, 16] * 2 + [1, 2, 4] * 4


def test_one_slow_round_does_not_rule_a_size_out() -> None:
    timed: list[int] = []

    def time_batch(size: int) -> float:
        timed.append(size)
        taken = 0.3 if size == 4 and len(timed) == 3 else CPU[size]  # a burst during 4's warm-up
        return Round(taken, taken)

    measure_batch_sizes(time_batch, largest=8, budget_s=0.2)
    assert timed.count(4) == 6


def test_a_burst_of_load_during_one_sweep_does_not_decide() -> None:
    calls: list[int] = []

    def time_batch(size: int) -> Round:
        calls.append(size)
        burst = size == 4 and calls.count(4) == 2  # another process ran during 4's first timed pass
        return Round(2.0, 0.5) if burst else Round(CPU[size], CPU[size])

    rounds = measure_batch_sizes(time_batch, largest=8, budget_s=1.0)
    assert rounds[4] == Round(CPU[4], CPU[4]) and choose_batch_size(rounds, 1.0, by_cpu=True) == 4


def test_the_real_model_is_timed_side_by_side_and_a_size_chosen(inference: RunningInference) -> None:
    runner: ModelRunner = inference.service.models["efficientnet-lite0"].runner
    with runner.side_by_side(instances=2, threads=1) as time_batch:
        chosen = tune_batch_size(
            "efficientnet-lite0", time_batch, largest=2, budget_s=10.0, passes=2, by_cpu=True
        )
    assert chosen in (1, 2)


def test_each_pass_runs_in_a_thread_of_its_own_on_its_share_of_threads(
    inference: RunningInference, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner: ModelRunner = inference.service.models["efficientnet-lite0"].runner
    seen: list[tuple[int, int, int]] = []

    def run(items: Sequence[Item]) -> list[Answer]:
        seen.append((threading.get_ident(), torch.get_num_threads(), len(items)))
        return []

    monkeypatch.setattr(runner, "run", run)
    with runner.side_by_side(instances=2, threads=1) as time_batch:
        time_batch(3)
    assert len({thread for thread, _, _ in seen}) == 2
    assert [(threads, size) for _, threads, size in seen] == [(1, 3), (1, 3)]


def test_the_service_times_its_instances_on_their_share_of_the_threads() -> None:
    shapes: list[tuple[int, int]] = []

    class Shapes(ModelRunner):
        def __init__(self, device: str) -> None:  # nothing to load: only what is asked is checked
            self.device = torch.device(device)

        @contextmanager
        def side_by_side(self, instances: int, threads: int) -> Iterator[Callable[[int], Round]]:
            shapes.append((instances, threads))
            yield lambda size: SHARED_MACHINE[size]

    chosen = time_and_choose(ModelConfig(name="m", instances=2), Shapes("cpu"), 4, largest=4, budget_s=0.5)
    assert (chosen, shapes) == (2, [(2, 2)])  # on a CPU by CPU time
    time_and_choose(ModelConfig(name="m", instances=3), Shapes("cpu"), 2, largest=4, budget_s=0.5)
    assert shapes[-1] == (3, 1)  # never less than one thread
    # On a GPU the wall clock decides (CPU time there is the host's, not the device's).
    assert time_and_choose(ModelConfig(name="m"), Shapes("cuda"), 2, largest=4, budget_s=0.5) == 1
