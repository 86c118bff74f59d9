"""Failpoints: named places in the code where a fault test can make the process die on the spot.

A failpoint that fires ends the process with ``os._exit(137)``: no cleanup, no ``finally``, no
flushing of buffers, as if the process had been sent SIGKILL at exactly that line. That is the
crash a fault test needs to pin ("the runner died after its record was published but before its
ack"), and one a signal sent from outside cannot aim at. There are two ways to enable one:

* ``FERRY_FAILPOINTS="jobs.after_record_publish,other.name"``: the process dies the first time it
  reaches one of these. For a test that starts the process itself; a process restarted with the
  same environment dies again.
* ``FERRY_FAILPOINTS_DIR=/some/dir``: a failpoint is armed by creating the empty file
  ``/some/dir/<name>`` while the stack runs, and fires once: the process that reaches it first
  removes the file and dies, and its replacement (started by the supervisor with the same
  environment) runs on. For a whole supervised stack (``tests/faults``).

Unset (everywhere but in such tests), a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import sys

#: The environment variable naming failpoints enabled for the process's whole life.
ENV = "FERRY_FAILPOINTS"
#: The environment variable naming a directory whose files arm failpoints once each.
DIR_ENV = "FERRY_FAILPOINTS_DIR"

#: The exit status of a process killed by SIGKILL, as a shell reports it (128 + 9).
EXIT_CODE = 137


def enabled(name: str) -> bool:
    """Whether failpoint ``name`` is named in ``FERRY_FAILPOINTS``.

    The environment is read on every call rather than once, so a test may enable a failpoint
    for a child process by setting the variable before starting it, whatever was imported first.
    """
    return name in {part.strip() for part in os.environ.get(ENV, "").split(",")}


def _take_armed(name: str) -> bool:
    """Disarms ``name`` in ``FERRY_FAILPOINTS_DIR``; True when it was armed and this process took it.

    Removing the file is the claim: when several processes reach the failpoint at once, exactly
    one removal succeeds, so one arming kills one process.
    """
    directory = os.environ.get(DIR_ENV)
    if not directory or os.sep in name:
        return False
    try:
        os.unlink(os.path.join(directory, name))
    except OSError:  # not armed (or the directory is gone): nothing to do
        return False
    return True


def failpoint(name: str) -> None:
    """Kills the process at once (exit status 137, like SIGKILL) when failpoint ``name`` is enabled.

    One line goes to stderr first, so a test's log says why the process vanished.
    """
    if not name or not (enabled(name) or _take_armed(name)):
        return
    sys.stderr.write(f"failpoint {name} reached: exiting with {EXIT_CODE}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)
