"""Measured batch sizes, kept in NATS KV so that a restart skips the timing.

Timing the candidate batch sizes (``tuning``) takes 3-4 s per image model on a 2-core CPU, more
under load, and it is most of what a restarting inference spends before a model serves again; it
also picks a different size now and then when other work disturbs the timing. So a size measured
once is kept in the bucket ``ferry_batch_sizes`` under a key that names everything the measurement
depends on: the model's whole settings (version, graph, options, instances, ...), the device and
what it is (the CPU's model name and core count, or the GPU's name), torch's thread count and
version, the search's bounds and how sizes are timed and chosen (``tuning.METHOD``). A replica on
the same kind of machine reuses it; any change measures again.
``FERRY_INFERENCE_KEEP_BATCH_SIZES=false`` measures at every start, and deleting a key
(``nats kv del ferry_batch_sizes <key>``, or the bucket) forgets a measurement.

Off unless ``FERRY_INFERENCE_NATS_URL`` is set, like the kept load/unload state (``model_states``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from functools import cache
from typing import Any

import torch
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.common import messaging
from services.inference import tuning
from services.inference.models.config import ModelConfig

log = logging.getLogger(__name__)

BUCKET = "ferry_batch_sizes"


@cache
def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's word for it elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    """What the device is, as far as a batch size's timing depends on it."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {_cpu_name()} x{os.cpu_count()}"


def measurement_key(config: ModelConfig, device: torch.device, largest: int, budget_s: float) -> str:
    """The bucket key of ``config``'s batch size measured on ``device``: readable name and version,
    then a digest of everything else the measurement depends on."""
    depends: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "device": str(device),
        "hardware": hardware(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "largest": largest,
        "budget_s": budget_s,
        "method": tuning.METHOD,
    }
    digest = hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:20]
    return f"{_key_part(config.name)}.{_key_part(config.version)}.{digest}"


def _key_part(text: str) -> str:
    # NATS KV keys take [-/_=.a-zA-Z0-9]; '.' separates the parts here.
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_=") else "_" for c in text)


class KeptBatchSizes:
    """Reads and writes measured batch sizes in the bucket; a failure of NATS only costs a measurement."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> KeptBatchSizes:
        """Opens the bucket, creating it with ``replicas`` copies when this replica is the first."""
        return cls(await messaging.open_key_value(js, BUCKET, replicas))

    async def get(self, key: str) -> int | None:
        """The batch size kept under ``key``, if one is (and readable)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        except Exception as err:  # NATS unreachable: measure instead
            log.warning("could not read the kept batch size %s: %r; measuring", key, err)
            return None
        try:
            size = int(json.loads(entry.value or b"{}")["batch_size"])
        except (ValueError, KeyError, TypeError):
            log.warning("the kept batch size %s is unreadable (%r); measuring", key, entry.value)
            return None
        return size if size >= 1 else None

    async def put(self, key: str, size: int) -> None:
        """Keeps ``size`` under ``key``."""
        try:
            await self._kv.put(key, json.dumps({"batch_size": size}).encode())
        except Exception as err:  # the next start measures again
            log.warning("could not keep the batch size %s: %r", key, err)
