"""Batch work in a ``cpu.idle`` cgroup: the kernel's idle scheduling group.

``SCHED_IDLE`` on a thread ranks it only inside its own scheduling group (its process's autogroup
or container), and a group at a low weight (an autogroup at nice 19) is still a normal entity: a
waking Envoy or gateway thread may wait for the running group's slice on each wake-up of a call.
A cgroup whose ``cpu.idle`` is 1 is itself an idle entity: any non-idle waker preempts it at once,
and a core that runs only idle entities counts as free when the kernel places a waking task
(``check_preempt_wakeup_fair``, ``sched_idle_cpu``). docs/inference.md, *Batch jobs' CPU*.

One group, ``ferry-jobs`` under the cpu controller's root, is shared by every stack and test on
the machine: created if missing (idempotent), never removed (another process may be in it).
cgroup v1's ``cpu`` controller lets a single thread move (its ``tasks`` file); on cgroup v2 the
group is a threaded child of this process's own cgroup (``cgroup.threads``). Threads that a moved
thread creates later (torch's OpenMP team) start in its group. Where no such group can be written
(not root, a read-only ``/sys`` as in most containers, a kernel without ``cpu.idle``) one log line
says why and nothing changes: the caller keeps today's behaviour (``SCHED_IDLE`` only).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CpuIdle = Literal["auto", "off"]
"""``auto``: join the idle group where it can be written, else log once and carry on; ``off``: never."""

GROUP = "ferry-jobs"
V1_ROOT = Path("/sys/fs/cgroup/cpu")
"""Where the cgroup v1 ``cpu`` controller is mounted on the usual distributions."""

_said: set[str] = set()
_said_lock = threading.Lock()


@dataclass(frozen=True)
class IdleGroup:
    """A ``cpu.idle`` group and how a thread or process joins it."""

    path: Path
    threads_file: str
    """``tasks`` (v1) or ``cgroup.threads`` (v2): a thread id written here moves that thread only."""
    procs_file: str
    """``cgroup.procs``: a process id written here moves all of its threads."""
    version: int


def _say_once(reason: str) -> None:
    """Logs why batch work stays out of the idle group, once per process and reason."""
    with _said_lock:
        if reason in _said:
            return
        _said.add(reason)
    log.warning("batch work runs outside a cpu.idle cgroup (SCHED_IDLE only): %s", reason)


def _v2_parent(mountinfo: str, own_cgroup: str) -> Path:
    """This process's own cgroup v2 folder: where cgroup2 is mounted (``mountinfo``, the text of
    ``/proc/self/mountinfo``) joined with its ``0::`` line (``own_cgroup``, of ``/proc/self/cgroup``).

    Raises:
        OSError: no cgroup2 mount, or no ``0::`` line.
    """
    mounts = [line.split()[4] for line in mountinfo.splitlines() if " - cgroup2 " in line]
    own = [line.split(":", 2)[2] for line in own_cgroup.splitlines() if line.startswith("0::")]
    if not mounts or not own:
        raise OSError("no cgroup v1 cpu controller and no cgroup v2 mount")
    return Path(mounts[0]) / own[0].lstrip("/")


def _v2_group(parent: Path) -> IdleGroup:
    """A threaded child of the v2 cgroup ``parent`` (this process's own), with ``cpu`` enabled over it."""
    if "cpu" not in (parent / "cgroup.controllers").read_text().split():
        raise OSError(f"the cgroup v2 cgroup {parent} has no cpu controller")
    group = parent / GROUP
    group.mkdir(exist_ok=True)  # the kernel makes its interface files (cgroup.type, cpu.idle, ...)
    if (group / "cgroup.type").read_text().strip() != "threaded":
        (group / "cgroup.type").write_text("threaded")
    if "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
        (parent / "cgroup.subtree_control").write_text("+cpu")
    return IdleGroup(group, "cgroup.threads", "cgroup.procs", 2)


def idle_group(root: Path = V1_ROOT) -> IdleGroup:
    """The ``cpu.idle`` group, created if missing and set idle (safe to call from many processes).

    Args:
        root: the cgroup v1 ``cpu`` controller's root (it has ``cpu.idle``), or a cgroup v2 cgroup
            (it has ``cgroup.controllers``) to make the group under. The default, where it has no
            ``cpu.idle``: this process's own cgroup v2 cgroup. Tests point it at folders of their own.

    Raises:
        OSError: no group can be made or written here (the message says why).
    """
    if (root / "cgroup.controllers").exists():
        group = _v2_group(root)
    elif (root / "cpu.idle").exists():
        group = IdleGroup(root / GROUP, "tasks", "cgroup.procs", 1)
        group.path.mkdir(exist_ok=True)  # another stack may have made it a moment ago
    elif root == V1_ROOT:
        mountinfo, own = Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text()
        group = _v2_group(_v2_parent(mountinfo, own))
    else:
        raise OSError(
            f"{root} has no cpu.idle (not a cgroup cpu controller on kernel >= 5.15) and no "
            "cgroup.controllers (not a cgroup v2 cgroup)"
        )
    if (group.path / "cpu.idle").read_text().strip() != "1":
        (group.path / "cpu.idle").write_text("1")
    return group


def _in_group(cgroup_file: Path, group: IdleGroup) -> bool:
    """Whether ``/proc/<pid>/task/<tid>/cgroup`` names ``group``."""
    wanted = f"/{GROUP}"
    for line in cgroup_file.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if group.version == 1 and "cpu" in controllers.split(",") and path.endswith(wanted):
            return True
        if group.version == 2 and controllers == "" and path.endswith(wanted):
            return True
    return False


def _join(kind: Literal["thread", "process"], ident: int, root: Path) -> bool:
    """Writes thread or process ``ident`` into the idle group and checks the kernel's record.

    Returns:
        Whether it is there now; False (with one log line per reason) where it cannot be.
    """
    try:
        group = idle_group(root)
        members, record = (
            (group.threads_file, f"/proc/self/task/{ident}/cgroup")
            if kind == "thread"
            else (group.procs_file, f"/proc/{ident}/cgroup")
        )
        (group.path / members).write_text(str(ident))
        if not _in_group(Path(record), group):
            raise OSError(f"{group.path} took {kind} {ident} but the kernel did not move it")
    except OSError as err:
        _say_once(str(err))
        return False
    return True


def join_this_thread(mode: CpuIdle = "auto", root: Path = V1_ROOT) -> bool:
    """Moves the calling thread (and the threads it starts later) into the idle group.

    Returns:
        Whether it is there now; False (with one log line per reason) where it cannot be.
    """
    return mode != "off" and _join("thread", threading.get_native_id(), root)


def join_process(pid: int, mode: CpuIdle = "auto", root: Path = V1_ROOT) -> bool:
    """Moves process ``pid`` (every thread, and those it starts later) into the idle group.

    Returns:
        Whether it is there now; False (with one log line per reason) where it cannot be.
    """
    return mode != "off" and _join("process", pid, root)


def current_group(tid: int | None = None) -> str:
    """The cpu controller's cgroup of thread ``tid`` of this process (default: the caller), e.g.
    ``/ferry-jobs`` (v1's ``cpu`` line, else the v2 line); for checks and tests."""
    tid = threading.get_native_id() if tid is None else tid
    lines = Path(f"/proc/{os.getpid()}/task/{tid}/cgroup").read_text().splitlines()
    entries = [line.split(":", 2) for line in lines]
    v1 = [path for _, controllers, path in entries if "cpu" in controllers.split(",")]
    return v1[0] if v1 else next(path for _, controllers, path in entries if controllers == "")
