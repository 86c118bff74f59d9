"""CPU per request of every process of the stack, beside the model's own decode and forward costs.

``python -m benchmarks.cpu [--seconds 20] [--clients 16]`` measures, in one run:

* decode + preprocess of the 451x300 cat photo and of a 6-megapixel phone photo in this process
  (CPU ms per image, as the service's decode threads do it; the JPEG decode alone and the old
  float pipeline beside each), and the forward pass at batch 1 and 4 (CPU ms per image on
  one torch thread: the work, without OpenMP's spin; then on every torch thread, the difference
  being what OpenMP's idle threads burn: ``FERRY_INFERENCE_OPENMP_SPIN_COUNT=0 python -m
  benchmarks.cpu`` compares another spin, for this process and the stack alike);
* a whole local stack (``ferry up`` on free ports in a temporary folder) under gRPC Predict
  through Envoy at ``--clients`` closed-loop clients for ``--seconds``: the CPU each process
  spent (``/proc/<pid>/stat``, children included: Postgres's backends) divided by the requests;
  with ``--profile DIR``, py-spy (not one of Ferry's dependencies: ``pip install py-spy``) samples
  the gateway, store and inference meanwhile and writes their stacks to ``DIR/<process>.txt``
  (collapsed: one stack a line, then its count, what flame graph tools read).

Inference's own CPU is split by thread (``/proc/<pid>/task``; Python's thread names from ``py-spy
dump`` when py-spy is installed): batch threads, OpenMP's workers, decode threads, the event loop
(gRPC aio), gRPC's C threads. Its floor is taken the way the server ran: each request's forward
at the one-thread CPU per image of the batch size it ran in (``timing.batch_size`` of its answer;
every size measured with the stack idle and again after the load), plus the decode.

Then it prints edge and records (gateway, Envoy, store, NATS, jobs), what is outside decode and
forward (every process's total minus the two floors), and the load average, since other
processes on a shared machine lengthen wall times but barely move CPU time per request; then the
same net of each process's CPU with no requests at all (measured for 5 s before the load): on a
loaded machine, where few requests run, that background would otherwise look like their cost.

The helpers (``cpu_seconds``, ``per_request_ms``) are shared with the other benchmarks:
divided by the requests of a row, each process's CPU is its cost per request (Linux ``/proc``;
elsewhere nothing is counted). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where a benchmark needs it
    from services.inference.models.contract import Item
    from services.inference.runner import ModelRunner

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process plus its live children (Postgres's backends)."""
    parents: dict[int, list[int]] = defaultdict(list)
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else ():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parents[found[0]].append(int(entry.name))
            used[int(entry.name)] = found[1]
    return {name: used.get(pid, 0.0) + sum(used[c] for c in parents[pid]) for name, pid in pids.items()}


def sched_seconds(pid: int | str = "self") -> tuple[float, float]:
    """(seconds on a CPU, seconds ready but waiting for one) of a process's live threads so far,
    from the scheduler's own accounting (``/proc/<pid>/task/*/schedstat``); (0, 0) once it is gone.

    The wait is the time its threads were runnable and on a run queue: what CPU contention costs it.
    """
    on_cpu = waiting = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0, 0.0
    for task in tasks:
        try:
            ran, waited, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        on_cpu, waiting = on_cpu + int(ran), waiting + int(waited)
    return on_cpu / 1e9, waiting / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent so far, every core (``/proc/stat``: neither
    idle nor iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process alone (its threads; not its children)."""
    times = os.times()
    return times.user + times.system


def per_request_ms(before: Mapping[str, float], after: Mapping[str, float], requests: int) -> str:
    """``name 12.3`` for each process, the CPU milliseconds it spent per request, most first."""
    spent = {name: (after.get(name, 0.0) - before.get(name, 0.0)) * 1000 / requests for name in before}
    return ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]))


IDLE_S = 5.0
"""How long the stack's CPU is measured with no requests before the load starts."""

EDGE_AND_RECORDS = ("gateway", "envoy", "store", "nats", "jobs")
"""Ferry's own layers around the model (issue 18's target: <= 1 ms of CPU per request together)."""


def median_ms(
    call: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median ms of ``call`` by ``clock`` (wall time unless told)."""
    spent = []
    for _ in range(repeats):
        started = clock()
        call()
        spent.append((clock() - started) * 1000)
    return sorted(spent)[len(spent) // 2]


def thread_cpu_ms(call: Callable[[], object], repeats: int) -> float:
    """Median CPU ms of this thread per ``call`` (the decode threads' cost of one image)."""
    return median_ms(call, repeats, time.thread_time)


def interleaved_cpu_ms(
    runner: ModelRunner, item: Item, sizes: Sequence[int], rounds: int
) -> dict[int, float]:
    """Median thread CPU ms per image of a forward pass at each of ``sizes``, the sizes taken in
    turn in every round, so that a burst of other load falls on all of them alike."""
    spent: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            spent[size].append(thread_cpu_ms(partial(runner.run, [item] * size), 1) / size)
    return {size: sorted(ms)[len(ms) // 2] for size, ms in spent.items()}


def one_thread_forward(runner: ModelRunner, item: Item, largest: int) -> dict[int, float]:
    """CPU ms per image of a forward pass at every batch size from 1 to ``largest``, one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return interleaved_cpu_ms(runner, item, range(1, largest + 1), rounds=5)
    finally:
        torch.set_num_threads(threads)


def process_cpu_ms(call: Callable[[], object], repeats: int) -> float:
    """Mean CPU ms of this whole process per ``call`` (a forward pass uses every torch thread)."""
    started = own_cpu_seconds()
    for _ in range(repeats):
        call()
    return (own_cpu_seconds() - started) * 1000 / repeats


def closed_loop(call: Callable[[], object], clients: int, seconds: float) -> int:
    """Runs ``call`` in ``clients`` threads, each again as soon as it returns, for ``seconds``."""
    done = [0] * clients
    until = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < until:
            call()
            done[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def pil_reference(content: bytes) -> object:
    """Decode and preprocess as ``ImageTransform.decode`` did before issue 18, step for step: PIL
    decode (drafted), EXIF transpose and RGB copies, PIL bicubic resize, crop, float normalise in numpy."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    opened = Image.open(io.BytesIO(content))
    if opened.format == "JPEG":  # the same DCT shortcut as today (shorter side >= 512)
        width, height = opened.size
        opened.draft(
            "RGB", (round(width * 512 / min(width, height)), round(height * 512 / min(width, height)))
        )
    image = ImageOps.exif_transpose(opened).convert("RGB").convert("RGB")
    width, height = image.size
    size = (
        (max(1, int(256 * width / height)), 256)
        if width > height
        else (256, max(1, int(256 * height / width)))
    )
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    image = image.crop((left, top, left + 224, top + 224))
    scaled = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    normalised = (scaled - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


PROFILED = ("gateway", "store", "inference")
"""The Python processes that ``--profile`` samples: edge and records, and inference."""


def start_profiles(pids: Mapping[str, int], folder: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """Starts py-spy on each of ``PROFILED`` for ``seconds`` (200 samples a second, without pausing them)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                *("py-spy", "record", "--nonblocking", "--threads", "--rate", "200", "--format", "raw"),
                *(
                    "--duration",
                    str(round(seconds)),
                    "--pid",
                    str(pid),
                    "--output",
                    str(folder / f"{name}.txt"),
                ),
            ],
            stdout=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name in PROFILED
    ]


def threads_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """(name the kernel knows, CPU seconds so far) of each thread of ``pid``."""
    found: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = raw.rsplit(")", 1)[1].split()
        found[int(task.name)] = (
            raw[raw.index("(") + 1 : raw.rindex(")")],
            (int(fields[11]) + int(fields[12])) / _TICKS,
        )
    return found


def python_thread_names(pid: int) -> dict[int, str]:
    """Python's name of each of ``pid``'s Python threads by thread id (``py-spy dump``; empty without
    py-spy): threads Python does not know (OpenMP's workers, gRPC's C threads) are not listed."""
    try:
        dump = subprocess.run(
            ["py-spy", "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for line in dump.splitlines():
        # Thread 12345 (idle): "MainThread"  (some versions print the id in hex)
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            names[int(tid, 16) if tid.startswith("0x") else int(tid)] = line.split('"')[1]
    return names


def thread_role(python_name: str | None, kernel_name: str) -> str:
    """What an inference thread does, from its Python name (when Python knows it) or the kernel's."""
    if python_name is None:
        # libgomp's workers inherit the name of the thread that made their team (``python``);
        # gRPC's core names its own threads.
        # Since session 8 they inherit the batch thread's own kernel name (``batch-<model>``).
        if kernel_name.startswith(("python", "batch-")):
            return "OpenMP workers"
        return f"C threads ({kernel_name})"
    if python_name.startswith("batch-"):
        return "batch threads (forward passes, normalise, top-k)"
    if python_name.startswith("decode"):
        return "decode threads (decode + preprocess)"
    if python_name == "MainThread":
        return "event loop (gRPC aio, admission, batcher, answers)"
    return f"Python thread {python_name.split(' ')[0]}"


def kernel_role(kernel_name: str) -> str:
    """What an inference thread does, from the kernel's name alone (no py-spy): the decode and batch
    threads name themselves (``services.common.threads``), and OpenMP's workers inherit the name of
    the batch thread whose team they are."""
    if kernel_name.startswith("batch-"):
        return "batch threads and their OpenMP workers (forward passes)"
    if kernel_name.startswith("decode"):
        return "decode threads (decode + preprocess)"
    if kernel_name.startswith("python"):
        return "event loop and other Python threads (gRPC aio, admission, batcher, answers)"
    return f"C threads ({kernel_name})"


def cpu_by_role(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]], names: Mapping[int, str]
) -> dict[str, float]:
    """CPU seconds spent between ``before`` and ``after`` by each role of thread (``thread_role``)."""
    spent: dict[str, float] = defaultdict(float)
    for tid, (kernel_name, seconds) in after.items():
        role = thread_role(names.get(tid), kernel_name) if names else kernel_role(kernel_name)
        spent[role] += seconds - before.get(tid, (kernel_name, 0.0))[1]
    return dict(spent)


def load_average() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    # Imported here: the helpers above are used by other benchmarks without torch or a stack.
    import torch

    from benchmarks import raw
    from benchmarks.bulk import phone_photo
    from benchmarks.e2e import MODEL, cat_jpeg
    from benchmarks.inference import API_KEY, ferry_stack, machine
    from ferry_client import FerryClient
    from services.inference.models.contract import ModelInput
    from services.inference.preprocessing import decode_pixels
    from services.inference.service import model_configs
    from services.inference.settings import InferenceSettings

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the loaded stretch")
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the gateway, store and inference with py-spy under load, into this folder",
    )
    args = parser.parse_args()
    image = cat_jpeg()
    print(f"{MODEL}, one 451x300 JPEG per request, {args.clients} clients, {args.seconds:.0f} s")
    print(f"machine before: {machine()}; /proc/loadavg {load_average()}", flush=True)

    # The floor is the graph the stack serves: the model's table in models.toml, unless
    # FERRY_INFERENCE_GRAPH (which reaches the stack's inference too) says otherwise.
    [served] = model_configs(InferenceSettings(models=[MODEL]))
    graph = served.graph
    print(f"graph: {graph}", flush=True)
    runner = raw.load(MODEL, graph)  # type: ignore[arg-type]  # the service's settings check it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the service's decode threads
    # The cat is what the stack below is sent; a phone's photo is what bulk jobs bring (drafted).
    photos = {
        "cat 451x300": (image, 200),
        "6-megapixel photo": (phone_photo(6.0), 10),
    }
    pixels_cost: dict[str, float] = {}
    for name, (content, repeats) in photos.items():
        model_input = ModelInput(kind="image", image=content)
        pixels_ms = pixels_cost[name] = thread_cpu_ms(partial(runner.model.preprocess, model_input), repeats)
        jpeg_ms = thread_cpu_ms(partial(decode_pixels, content, min_side=512), repeats)
        reference_ms = thread_cpu_ms(partial(pil_reference, content), repeats)
        print(
            f"decode + preprocess, {name}: {pixels_ms:.2f} ms CPU per image (uint8 pixels; normalised "
            f"in the batch), of which the JPEG decode {jpeg_ms:.2f}; the float PIL pipeline it "
            f"replaced: {reference_ms:.2f} ms, {reference_ms / pixels_ms:.2f}x (target >= 2x)",
            flush=True,
        )
    decode_ms = pixels_cost["cat 451x300"]
    item = raw.item(runner, image)
    # One torch thread: the work itself, without OpenMP's spinning between parallel regions
    # (which the stack's CPU figures do include; the difference is what the spin costs there).
    runner.warm_up(batches=3, batch_size=4)
    forward = {size: thread_cpu_ms(lambda size=size: runner.run([item] * size), 30) / size for size in (1, 4)}
    torch.set_num_threads(threads)
    print(
        f"floors in this process: decode + preprocess {decode_ms:.2f} ms CPU per image; forward "
        + ", ".join(f"batch {size} {ms:.2f}" for size, ms in forward.items())
        + " ms CPU per image",
        flush=True,
    )
    # The same passes on every torch thread, as a batch that runs alone in the service does: the
    # difference is what OpenMP's idle threads burn spinning (FERRY_INFERENCE_OPENMP_SPIN_COUNT).
    teamed = {size: process_cpu_ms(lambda size=size: runner.run([item] * size), 30) / size for size in (1, 4)}
    print(
        f"forward on {threads} torch threads (GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}): "
        + ", ".join(f"batch {size} {ms:.2f} ({ms - forward[size]:+.2f})" for size, ms in teamed.items())
        + " ms CPU per image (spin and hand-offs over one thread)",
        flush=True,
    )

    with ferry_stack() as endpoints, FerryClient(endpoints.grpc_target, API_KEY, timeout_s=120) as ferry:
        for _ in range(20):  # warm: connections, the model's first batches, the catalog
            ferry.predict(image)
        pids = dict(endpoints.pids)
        # What each process spends with no requests at all (timers, pulls, health checks): on a
        # loaded machine few requests run, and this share would otherwise look like their cost.
        idle_before, idle_started = cpu_seconds(pids), time.perf_counter()
        time.sleep(IDLE_S)
        idle_after, idle_s = cpu_seconds(pids), time.perf_counter() - idle_started
        # The forward at every batch size the server may form, one thread, with the stack idle;
        # again after the load: the floor is their mean, at the sizes the requests ran in.
        largest = next(m.max_batch_size for m in ferry.list_models() if m.name.endswith(MODEL))
        at_size_before = one_thread_forward(runner, item, largest)
        names = python_thread_names(pids["inference"])
        threads_before = threads_cpu(pids["inference"])
        before = cpu_seconds(pids)
        started = time.perf_counter()
        profiles = start_profiles(pids, args.profile, args.seconds) if args.profile else []
        served: list[int] = []  # the batch size each request ran in (list.append is atomic)
        requests = closed_loop(
            lambda: served.append(ferry.predict(image).timing.batch_size), args.clients, args.seconds
        )
        elapsed = time.perf_counter() - started
        for profile in profiles:
            profile.wait()
        after = cpu_seconds(pids)
        threads_after = threads_cpu(pids["inference"])
        # Again: a batch instance's thread starts only when two batches first run at once.
        names |= python_thread_names(pids["inference"])
        by_role = cpu_by_role(threads_before, threads_after, names)
        print(f"\n/proc/loadavg at the end of the loaded stretch: {load_average()}")
    spent = {name: (after[name] - before[name]) * 1000 / requests for name in pids}
    idle = {name: (idle_after[name] - idle_before[name]) * 1000 / idle_s for name in pids}
    net = {name: spent[name] - idle[name] * elapsed / requests for name in pids}
    print(f"{requests} requests in {elapsed:.1f} s: {requests / elapsed:.1f} req/s\n")
    print(
        f"inference's CPU by thread (ms per request; Python's names from py-spy "
        f"{'dump' if names else 'not available: pip install py-spy'}):"
    )
    for role, seconds in sorted(by_role.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"  {role:<56} {seconds * 1000 / requests:>8.2f}")
    # The floor the way the server ran: each request's image at the one-thread CPU per image of
    # the batch size it actually ran in (two batches side by side each get one of two threads).
    sizes = Counter(served)
    at_size_after = one_thread_forward(runner, item, largest)
    at_size = {size: (at_size_before[size] + at_size_after[size]) / 2 for size in at_size_before}
    served_forward = sum(at_size[size] * count for size, count in sizes.items()) / len(served)
    print(
        "batch sizes the requests ran in: "
        + ", ".join(f"{size}: {count}" for size, count in sorted(sizes.items()))
        + "; one-thread forward at each size, stack idle / after the load (ms CPU per image): "
        + ", ".join(f"{size} {at_size_before[size]:.2f}/{at_size_after[size]:.2f}" for size in at_size)
        + f"; at the sizes served {served_forward:.2f} per request (at batch 1 or 4, the better, "
        f"before the stack: {min(forward.values()):.2f})\n"
    )
    print(f"{'process':<24} {'CPU ms/request':>14} {'idle CPU ms/s':>14} {'net of idle':>12}")
    for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"{name:<24} {ms:>14.2f} {idle[name]:>14.2f} {net[name]:>12.2f}")
    floor = decode_ms + served_forward
    for label, figures in (("", spent), (" (net of idle)", net)):
        total = sum(figures.values())
        edge = sum(ms for name, ms in figures.items() if name.split("-")[0] in EDGE_AND_RECORDS)
        inference = sum(ms for name, ms in figures.items() if name.startswith("inference"))
        print(f"\ntotal{label}: {total:.2f} ms per request")
        print(f"edge and records{label} ({', '.join(EDGE_AND_RECORDS)}): {edge:.2f} ms (target <= 1)")
        print(
            f"inference{label} {inference:.2f} ms against its floor {floor:.2f} (decode {decode_ms:.2f} + "
            f"forward {served_forward:.2f} at the batch sizes served): {inference - floor:+.2f} ms "
            "(target <= 1)"
        )
        print(f"outside decode and forward, all processes{label}: {total - floor:.2f} ms (target <= 2)")
    # The comparison above sets the batch threads against a floor measured in another process,
    # which moves by several ms between runs on a shared machine; the threads that are not the
    # model's are measured in the server alone.
    per_request = {role: seconds * 1000 / requests for role, seconds in by_role.items()}
    forward_threads = sum(ms for role, ms in per_request.items() if role.startswith(("batch", "OpenMP")))
    decode_threads = sum(ms for role, ms in per_request.items() if role.startswith("decode"))
    others = sum(per_request.values()) - forward_threads - decode_threads
    spread = max(abs(at_size_before[size] - at_size_after[size]) for size in sizes)
    print(
        f"\ninference outside its forward passes: {others:.2f} ms (event loop, gRPC's and other threads) "
        f"+ decode threads over the decode floor {decode_threads - decode_ms:+.2f} = "
        f"{others + decode_threads - decode_ms:.2f} ms per request; batch threads {forward_threads:.2f} "
        f"against the forward floor {served_forward:.2f}, whose two measurements differ by up to "
        f"{spread:.2f} ms per image"
    )
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
