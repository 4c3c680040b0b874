"""A driver that dies takes its workers with it.

`reap_on_death()` starts a small watchdog process beside the driver (`avae reproduce`, `avae sweep`)
while it runs worker processes or a local Ray cluster. The watchdog notes, twice a second, every
process the driver has started since, and their children. If the driver then dies without leaving
the block (SIGKILL, out of memory), the watchdog terminates what it noted, and what those processes
started, and kills whatever ignores SIGTERM a few seconds later. A run killed this way loses at most
its current epoch: the next `reproduce` resumes it from its last checkpoint.

It talks to the driver through its standard input: the driver writes "done" when the block ends
normally; an end of input without it means the driver is gone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import psutil

POLL_SECONDS = 0.5
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL
DONE = b"done\n"
# The watchdog loads this file alone, not the avae package (which would import torch).
LAUNCH = (
    "import importlib.util, sys; spec = importlib.util.spec_from_file_location('watchdog', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
    "module.watch(int(sys.argv[2]), {int(pid) for pid in sys.argv[3:]})"
)


@contextlib.contextmanager
def reap_on_death() -> Iterator[None]:
    """While the block runs, the processes this process starts die with it (see the module)."""
    earlier = [str(p.pid) for p in descendants(psutil.Process())]  # not this block's to reap
    watchdog = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, __file__, str(os.getpid()), *earlier],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # not in the terminal's process group: a Ctrl-C is the driver's to handle
    )
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            watchdog.stdin.write(DONE)
            watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=5)


def descendants(process: psutil.Process) -> set[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return set(process.children(recursive=True))
    return set()


def watch(driver_pid: int, earlier: set[int]) -> None:
    """The watchdog's loop: note the driver's descendants (but `earlier` ones) until its standard
    input ends."""
    driver = psutil.Process(driver_pid)
    before = earlier | {os.getpid()}
    noted: set[psutil.Process] = set()
    ended = threading.Event()
    message = bytearray()

    def read_input() -> None:
        while chunk := sys.stdin.buffer.read1(64):
            message.extend(chunk)
        ended.set()

    threading.Thread(target=read_input, daemon=True).start()
    while not ended.wait(POLL_SECONDS):
        noted |= {p for p in descendants(driver) if p.pid not in before}
        if not driver.is_running():
            break
    if bytes(message) == DONE:
        return
    reap(noted)


def reap(processes: set[psutil.Process]) -> None:
    """SIGTERM each process still running and everything it started, then SIGKILL what is left."""
    alive = {p for p in processes if p.is_running()}  # is_running also checks the pid was not reused
    for process in list(alive):
        alive |= descendants(process)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(list(alive), timeout=GRACE_SECONDS)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=GRACE_SECONDS)
