"""Run a training command so that none of its processes outlives the run: a small watchdog.

:func:`helpers.train.train` does not start XTuner (or ``torchrun``) itself;
it starts ``python -m helpers.procgroup PARENT_PID -- CMD ...``, this
module, which

1. dies with its parent: on Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` makes
   the kernel send it SIGTERM when the process that started it dies, even by
   SIGKILL (a killed kernel or runner); elsewhere, and as a backup, it checks
   every half second that its parent is still the one it was started by;
2. starts CMD in a process group (a session) of its own, so that a Ctrl-C in
   a terminal reaches the watchdog, which decides, and not the ranks one by
   one, and sets ``PR_SET_PDEATHSIG, SIGKILL`` on CMD, so CMD dies with it;
3. is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every process CMD
   starts stays its descendant even when its own parent dies, including
   ``torchrun``'s ranks, which run in sessions of their own, and the
   dataloader workers;
4. on SIGTERM, SIGINT or SIGHUP, on its parent's death, and when CMD ends,
   kills CMD's group and every descendant left (SIGKILL, so nothing lingers
   holding GPU memory), then exits with CMD's exit code (or 128 + the signal).

Usage (what helpers.train runs)::

    python -m helpers.procgroup PARENT_PID -- python -m helpers.xtuner_launch CONFIG --work-dir DIR
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.5


def _prctl(option: int, value: int) -> bool:
    """Call Linux ``prctl(option, value)``; False where there is no prctl (not Linux) or it fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kill_with_parent() -> None:
    """``preexec_fn`` for CMD: SIGKILL it when the watchdog dies (async-signal-safe enough: one syscall)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children first), read from ``/proc``; [] where there is no /proc.

    Zombies are listed too, and their children followed: a killed ``torchrun``
    stays a zombie until it is reaped, and its ranks (which torchrun starts in
    sessions of their own, beyond a process-group kill) are still its children
    until then. Skipping the zombie once hid the ranks, which trained on.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def kill_tree(leader: int) -> None:
    """SIGKILL the process group ``leader`` leads and every descendant of this process (none survive)."""
    for _ in range(50):  # a process may fork while we kill, or be re-parented to us: look again
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)
        left = descendants(os.getpid())
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        if not any(_alive(pid) for pid in descendants(os.getpid())):
            return
        time.sleep(0.05)


def _reap() -> None:
    """Collect exited children (the subreaper adopts orphans; their zombies are ours to wait for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def watch(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` in its own process group; end all of it with the parent or a signal; return its exit code."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 128 + signal.SIGTERM
    child = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_kill_with_parent)

    def stop(signum: int, frame: object) -> None:
        kill_tree(child.pid)
        print(
            f"helpers.procgroup: stopped the training (signal {signal.Signals(signum).name}); no process of it is left",
            flush=True,
        )
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                stop(signal.SIGTERM, None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    kill_tree(child.pid)  # dataloader workers or ranks that outlived their leader
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: python -m helpers.procgroup PARENT_PID -- CMD ...")
    sys.exit(watch(int(sys.argv[1]), sys.argv[3:]))
