"""How many inference processes ``ferry up`` starts, and how each one is told apart.

One process per device (``FERRY_INFERENCE_DEVICES=all`` or ``cuda:0,cuda:1``): a Python process
drives one GPU best, and one process crashing or restarting leaves the others serving. On a CPU,
``FERRY_INFERENCE_INSTANCES=N`` starts N processes; each gets its share of the cores as torch
threads, since N processes each using every core would fight over them. The gateway and the jobs
runner get every replica's address and balance over the ones that serve
(``services.common.channels``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

SERVICE = "inference"
#: The job lane's processes (``FERRY_INFERENCE_JOB_LANE``): inference that only the jobs runner calls.
JOB_LANE = "inference-jobs"
_THREADS_VARIABLE = "FERRY_INFERENCE_TORCH_THREADS"


@dataclass(frozen=True)
class Replica:
    """One inference process: its supervised name and the settings only it gets."""

    name: str
    """``inference`` when it is the only one, else ``inference-0``, ``inference-1``, ..."""
    env: dict[str, str] = field(default_factory=dict)
    """``FERRY_INFERENCE_*`` variables of this replica (its device, its torch threads)."""


def visible_gpus() -> int:
    """How many CUDA devices this machine shows (CUDA_VISIBLE_DEVICES applies); 0 without torch."""
    try:
        import torch  # a few seconds to import: only asked for FERRY_INFERENCE_DEVICES=all
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def devices_of(devices: str, gpus: int) -> list[str]:
    """The device of each replica ``devices`` asks for; empty: no device list (use instances).

    Raises:
        ValueError: an entry that is not a device name, or the same device twice.
    """
    wanted = devices.strip().lower()
    if wanted in ("", "auto"):
        return []
    if wanted == "all":
        return [f"cuda:{i}" for i in range(gpus)]  # none visible: fall back to instances on CPU
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    for name in names:
        kind, _, index = name.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
            raise ValueError(
                f"FERRY_INFERENCE_DEVICES: {name!r} is not a device; write all, or a list such as "
                "cuda:0,cuda:1"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"FERRY_INFERENCE_DEVICES lists a device twice: {devices!r}")
    return names


def inference_replicas(
    devices: str,
    instances: int,
    environ: Mapping[str, str] = os.environ,
    cpus: int | None = None,
    gpus: int | None = None,
) -> list[Replica]:
    """The inference processes to start.

    Args:
        devices: FERRY_INFERENCE_DEVICES (``all``, a list, or empty).
        instances: FERRY_INFERENCE_INSTANCES, used when ``devices`` gives no device.
        environ: the environment the services inherit (a torch thread count set there is kept).
        cpus: cores to share between CPU replicas (default: this machine's).
        gpus: visible GPUs (default: asked of torch, only for ``all``).

    Raises:
        ValueError: ``devices`` names something that is not a device.
    """
    if devices.strip().lower() == "all" and gpus is None:
        gpus = visible_gpus()
    names = devices_of(devices, gpus or 0)
    if names:
        envs = [{"FERRY_INFERENCE_DEVICE": name} for name in names]
    else:
        envs = [{} for _ in range(instances)]
        if instances > 1 and _THREADS_VARIABLE not in environ:
            share = max(1, (cpus or os.cpu_count() or 1) // instances)
            envs = [{_THREADS_VARIABLE: str(share)} for _ in range(instances)]
    if len(envs) == 1:
        return [Replica(SERVICE, envs[0])]
    return [Replica(f"{SERVICE}-{i}", env) for i, env in enumerate(envs)]
