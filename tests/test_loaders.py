"""DataLoader workers die with their main process: a SIGKILLed notebook kernel must not leave orphans behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r"""
import sys, time, torch
from eva_helpers.data.loaders import make_loader

class Slow(torch.utils.data.Dataset):
    def __len__(self): return 10_000
    def __getitem__(self, key):
        time.sleep(0.05)
        return {"x": torch.zeros(2), "meta": {}}

loader = make_loader(Slow(), 4, num_workers=2, seed=0)
for i, _ in enumerate(loader):
    if i == 0:
        print("running", flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("when", ["starting", "running"])
def test_workers_exit_when_the_main_process_is_killed(when):
    """Killed while the workers start (torch's own watchdog misses this) or once they run."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    if when == "running":
        assert proc.stdout.readline().strip() == "running"
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)  # only the main process, as an OOM kill does
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the main process was not running when killed (rc={proc.returncode})"
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [w for w in alive if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
        time.sleep(0.1)
    assert not alive, f"orphaned DataLoader workers still running: {alive}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
