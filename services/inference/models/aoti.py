"""AOTInductor graphs: a module exported and compiled ahead of time into a shared library, kept on
disk, and run through the library's C interface.

Why AOTInductor: on the CPU it runs efficientnet-lite0 on 24-45 % less CPU per image than the
traced TorchScript graph, and TorchScript is deprecated in torch 2.x (docs/inference.md, *Graph*).
Why a kept library: compiling one costs g++ and minutes of CPU, so it is built once per model,
weights, torch and CPU, under ``graph_dir``, and every later start (and every replica sharing the
folder) loads it in milliseconds.

Why ctypes and not ``torch._inductor.aoti_load_package``: that loader's Python binding holds the
GIL for the whole forward pass, so a serving process's event loop and decode threads stop for a
batch's length (``python -m benchmarks.graphs``: a busy Python thread kept 3-7 % of its pace beside
it, against 40-58 % beside the traced graph). A foreign call through ``ctypes.CDLL`` releases the
GIL, as TorchScript does between entry and exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: The largest batch a library accepts (its batch dimension is symbolic up to this).
MAX_BATCH = 1024

_c_void_p_array = ctypes.POINTER(ctypes.c_void_p)


class GraphBuildError(RuntimeError):
    """The module could not be exported or compiled (no C++ compiler, an unsupported operation)."""


@cache
def _cpu_flags() -> str:
    """The CPU's instruction set extensions: the library's kernels are compiled for them."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                return " ".join(sorted(line.partition(":")[2].split()))
    return os.uname().machine


def library_key(name: str, module: nn.Module, example: torch.Tensor, depends: Mapping[str, Any]) -> str:
    """A file name for ``module``'s library: readable model name, then a digest of what the
    compiled code depends on (weights, input shape, torch, the CPU's instruction sets, ``depends``)."""
    digest = hashlib.sha256()
    described = {
        "torch": torch.__version__,
        "cpu": _cpu_flags(),
        "input": [list(example.shape[1:]), str(example.dtype), str(example.device.type)],
        **depends,
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    return f"{safe}-{digest.hexdigest()[:24]}.so"


def kept_library(module: nn.Module, example: torch.Tensor, path: Path) -> tuple[Path, bool]:
    """The compiled library of ``module`` at ``path``: built there first if absent.

    Returns the path and whether this call built it. Processes that start together (replicas on
    one folder) take turns through a lock file, so one builds and the others load its result.

    Raises:
        GraphBuildError: Export or compilation failed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            return path, False
        _build(module, example, path)
        return path, True


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    from torch._inductor import aoti_compile_and_package  # imports inductor: seconds, only here

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with tempfile.TemporaryDirectory(prefix="ferry-aoti-", dir=path.parent) as folder:
        try:
            with torch.inference_mode():
                program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            package = aoti_compile_and_package(
                program,
                package_path=str(Path(folder) / "model.pt2"),
                # The weights go into the library itself: one file to keep and to load.
                inductor_configs={"aot_inductor.package_constants_in_so": True},
            )
            with zipfile.ZipFile(package) as archive:
                (member,) = (n for n in archive.namelist() if n.endswith(".so"))
                with archive.open(member) as source, open(Path(folder) / "model.so", "wb") as target:
                    shutil.copyfileobj(source, target)
        except Exception as err:  # torch raises many kinds: a missing compiler, an unsupported op
            raise GraphBuildError(f"{type(err).__name__}: {err}") from err
        os.replace(Path(folder) / "model.so", path)  # whole or absent, never half-written


class AotiGraph(nn.Module):
    """A compiled library's forward pass: one tensor in (a batch, any size up to MAX_BATCH), one out.

    Args:
        library: The ``.so`` that ``kept_library`` made.
        instances: Forward passes that may run at once (from as many threads); more wait.
    """

    def __init__(self, library: Path, instances: int = 1) -> None:
        super().__init__()
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        self._lib.AOTInductorModelContainerCreateWithDevice.argtypes = [
            _c_void_p_array,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_char_p,
        ]
        self._lib.AOTInductorModelContainerRun.argtypes = [
            ctypes.c_void_p,
            _c_void_p_array,
            ctypes.c_size_t,
            _c_void_p_array,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.AOTInductorModelContainerDelete.argtypes = [ctypes.c_void_p]
        handle = ctypes.c_void_p()
        create = self._lib.AOTInductorModelContainerCreateWithDevice
        _check(create(ctypes.byref(handle), instances, b"cpu", None), "create")
        self._handle: ctypes.c_void_p | None = handle
        outputs = ctypes.c_size_t()
        count = self._lib.AOTInductorModelContainerGetNumOutputs
        count.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        _check(count(handle, ctypes.byref(outputs)), "outputs")
        if outputs.value != 1:
            self.close()
            raise GraphBuildError(f"{library.name} has {outputs.value} outputs; a classifier has one")

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The module's output for ``batch`` (channels_last, as it was compiled)."""
        if self._handle is None:
            raise RuntimeError(f"{self.library.name} was closed")
        batch = batch.contiguous(memory_format=torch.channels_last)
        # The container takes the input handles over (and frees them); its outputs become ours.
        (given,) = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors([batch])
        inputs = (ctypes.c_void_p * 1)(_capsule_pointer(given))
        outputs = (ctypes.c_void_p * 1)()
        _check(self._lib.AOTInductorModelContainerRun(self._handle, inputs, 1, outputs, 1, None, None), "run")
        (result,) = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(outputs[0])])
        return result

    def close(self) -> None:
        """Frees the compiled models' memory (weights, buffers); the library stays mapped."""
        if self._handle is not None:
            self._lib.AOTInductorModelContainerDelete(self._handle)
            self._handle = None

    def __del__(self) -> None:
        if "_handle" in self.__dict__:  # absent when __init__ failed (a library that does not load)
            self.close()


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"AOTInductor {what} failed (code {code}): see the log above for torch's reason")


_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _capsule_pointer(capsule: object) -> int:
    pointer: int = _capsule_get(capsule, None)
    return pointer


def _capsule(pointer: int | None) -> Any:
    # torch's stubs say ctypes.c_void_p; at run time its _aoti functions take and give capsules.
    return _capsule_new(pointer, None, None)
