"""The forward pass's graph: TorchScript (what Ferry serves) against ``torch.export`` and ``torch.compile``.

``python -m benchmarks.graphs [--graphs traced export compile aoti] [--repeats 40] [--rounds 2]``
builds efficientnet-lite0 (channels_last, eval) once, then each graph from the same module, and
prints, in one process:

* each graph's set-up: wall seconds to build it, and the first call at batch 4 and then at batch 1
  (where ``torch.compile`` compiles: once per batch size it has not seen, unless shapes are
  dynamic), and the largest difference of its probabilities from the eager module's;
* then, for every graph in turn, ``--rounds`` times: CPU ms per image at batch 1 and 4 on one
  torch thread (this process's CPU time: the work, as a batch runs when two instances share the
  cores; inductor's kernels keep the thread count they were compiled with, and their other
  threads count too); batch 4 on one thread alone and beside a busy Python thread (wall ms: a
  graph that returns to Python between operations takes the GIL back each time, which in a
  server, with gRPC and decode threads, waits for the other threads, as the eager module does),
  and how much of its pace alone that busy thread kept meanwhile (a graph that holds the GIL for its
  whole pass stops it: in a server, the event loop and the decode threads would wait that long);
  and images/s at batch 4 on every torch thread (wall time: a batch that runs alone).

``compile`` is inductor with dynamic shapes off (one compile per batch size), ``compile-dynamic``
with a dynamic batch dimension, ``aoti`` ``torch.export`` then AOTInductor (a package of compiled
C++ that runs without Python between operations). The compilers need a C++ compiler (``g++``) at
run time; their set-up is minutes on a small CPU. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmarks.cpu import load_average, median_ms, process_cpu_ms
from benchmarks.e2e import MODEL
from services.inference.models.config import ModelConfig
from services.inference.models.image import ImageClassifier, trace
from services.inference.models.registry import build

GRAPHS = ("eager", "traced", "export", "compile", "compile-dynamic", "aoti")


def eager_model() -> ImageClassifier:
    """The served model's module, eager (channels_last, eval), on the CPU."""
    model = build(ModelConfig(name=MODEL, graph="eager"))
    assert isinstance(model, ImageClassifier)
    model.load(torch.device("cpu"))
    return model


def exported(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``module`` exported with a free batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=256)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def aoti(module: nn.Module, example: torch.Tensor, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` exported and compiled ahead of time by AOTInductor, loaded from its package."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    package = aoti_compile_and_package(exported(module, example), package_path=str(folder / "model.pt2"))
    loaded: Callable[[torch.Tensor], torch.Tensor] = aoti_load_package(package)
    return loaded


def build_graph(
    name: str, module: nn.Module, example: torch.Tensor, folder: Path
) -> Callable[..., torch.Tensor]:
    """The graph ``name`` made from ``module``."""
    if name == "eager":
        return module
    if name == "traced":
        return trace(module, example)
    if name == "export":
        program: Callable[..., torch.Tensor] = exported(module, example).module()
        return program
    if name == "compile":
        return torch.compile(module, dynamic=False)
    if name == "compile-dynamic":
        return torch.compile(module, dynamic=True)
    return aoti(module, example, folder)


def python_pace(seconds: float = 0.5) -> float:
    """Iterations per second of a pure-Python loop in this thread: the GIL's free time, read by the caller."""
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count / seconds


def beside_busy_python(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall ms of ``call`` while another thread runs pure Python (holds the GIL when it can),
    and that thread's pace meanwhile, in iterations per second.

    The pace is the server's side of it: a graph that holds the GIL for its whole pass (AOTInductor's
    Python binding does) leaves the event loop and the decode threads of a serving process nothing
    for that long, while one that releases it lets them run on the other core.
    """
    stop = threading.Event()
    paces: list[float] = []

    def busy() -> None:
        while not stop.is_set():
            paces.append(python_pace(0.05))

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        return median_ms(call, repeats), statistics.median(paces) if paces else 0.0
    finally:
        stop.set()
        thread.join()


def measure(
    graph: Callable[[torch.Tensor], torch.Tensor], batches: dict[int, torch.Tensor], repeats: int
) -> str:
    """One line of figures for ``graph`` (already built and called once per batch size)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = {size: process_cpu_ms(partial(graph, batches[size]), repeats // size * 2) / size for size in (1, 4)}
    alone_ms = median_ms(partial(graph, batches[4]), max(5, repeats // 8))
    busy_ms, pace = beside_busy_python(partial(graph, batches[4]), max(5, repeats // 8))
    alone_pace = python_pace()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    for _ in range(repeats // 4):
        graph(batches[4])
    rate = 4 * (repeats // 4) / (time.perf_counter() - started)
    return (
        f"one thread: batch 1 {cpu[1]:6.2f}, batch 4 {cpu[4]:6.2f} ms CPU per image; batch 4 alone "
        f"{alone_ms:6.1f}, beside busy Python {busy_ms:6.1f} ms wall, which kept {pace / alone_pace:4.0%} of "
        f"its pace alone | {threads} threads: batch 4 "
        f"{rate:6.1f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS))
    parser.add_argument("--repeats", type=int, default=40, help="passes per figure")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of every graph, in turn")
    args = parser.parse_args()
    compiler = shutil.which("g++") or "absent"
    print(
        f"{MODEL}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, g++ {compiler}; "
        f"/proc/loadavg {load_average()}",
        flush=True,
    )
    model = eager_model()
    assert model.module is not None
    module = model.module
    example = model.example_batch(torch.device("cpu"))
    batches = {size: model.transform.normalize(torch.stack([model.example()] * size)) for size in (1, 4)}
    reference = torch.softmax(module(batches[4]), dim=1)
    graphs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(prefix="ferry-graphs-") as folder, torch.inference_mode():
        for name in args.graphs:
            started = time.perf_counter()
            graph = graphs[name] = build_graph(name, module, example, Path(folder))
            built_s = time.perf_counter() - started
            firsts = []
            for size in (4, 1):
                started = time.perf_counter()
                graph(batches[size])
                firsts.append(time.perf_counter() - started)
            difference = float((torch.softmax(graph(batches[4]), dim=1) - reference).abs().max())
            print(
                f"{name:<16} built {built_s:6.1f} s, first batch 4 {firsts[0]:6.1f} s, then batch 1 "
                f"{firsts[1]:6.1f} s, max |dp| from eager {difference:.1e}",
                flush=True,
            )
        # The graphs in turn, round after round: a burst of other load falls on all of them alike.
        for round_ in range(1, args.rounds + 1):
            for name, graph in graphs.items():
                line = measure(graph, batches, args.repeats)
                print(f"round {round_} {name:<16} {line} | load {load_average()}", flush=True)


if __name__ == "__main__":
    main()
