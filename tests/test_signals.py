"""SIGINT (Ctrl-C, a notebook's Stop button) and SIGTERM (a runtime or a job scheduler stopping the process):

- training saves a checkpoint at the step it is in, says so in one line, and the next run resumes from it exactly
  (the same final weights as an uninterrupted run, CPU, deterministic); the CLI exits 130 / 143 without a traceback;
- a build stopped by SIGTERM keeps its verified shards and exits 143 in one line;
- a build's worker processes die with their main process (SIGTERM or SIGKILL): nothing is left behind after 10 s.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import write_synthetic_dataset  # noqa: E402
from _tiny import TinyCriterion, TinyDataset, TinyNet, run_tiny, tiny_config  # noqa: E402
from test_train_resume import assert_same_training  # noqa: E402

from eva_helpers.training.checkpoint import load_checkpoint, read_sidecar  # noqa: E402
from eva_helpers.signals import Interrupted  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the progress bar says where training is
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


# --- a notebook's Stop button: KeyboardInterrupt after the checkpoint, exact resume --------------------------------

class SignalAt(TinyDataset):
    """TinyDataset that sends this process SIGINT while loading its `at`-th sample (as the Stop button does)."""

    def __init__(self, n: int, size: int, at: int) -> None:
        super().__init__(n, size)
        self.at, self.count = at, 0

    def __getitem__(self, key):
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().__getitem__(key)


def test_stop_in_a_notebook_saves_that_step_raises_and_resumes_exactly(tmp_path):
    from eva_helpers.training.trainer import fit

    ref = run_tiny(tmp_path / "ref", n=24, checkpoint_interval_s=1e9)
    assert ref["finished"] and ref["global_step"] == 18
    reference = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")

    run = tmp_path / "stopped"
    cfg = tiny_config(run, checkpoint_interval_s=1e9)  # no timed checkpoint: any checkpoint is the interrupt's
    torch.manual_seed(cfg.seed)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as e:  # the cell stops
        fit(cfg, model=TinyNet(tasks=cfg.tasks), train_set=SignalAt(24, cfg.size, at=10),
            val_set=TinyDataset(8, cfg.size), criterion=TinyCriterion(cfg.tasks))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    msg = str(e.value)
    last = run / "checkpoints" / "last.pt"
    assert isinstance(e.value, Interrupted) and "\n" not in msg
    assert msg.startswith("stopped by SIGINT") and f"saved {last}" in msg and "resumes from it" in msg
    ck = load_checkpoint(last)  # sample 10 is in the 3rd batch of 4: saved after step 3, mid-epoch
    assert ck["global_step"] == 3 and ck["epoch"] == 0 and ck["global_consumed"] == 12
    assert "at step 3 (epoch 1, 12 of 24 samples)" in msg
    assert not (run / ".eva-lease.json").exists()  # released on the interrupt too
    resumed = run_tiny(run, n=24, checkpoint_interval_s=1e9)
    assert resumed["finished"]
    assert_same_training(reference, load_checkpoint(last))


# --- `eva train` stopped by SIGINT / SIGTERM in a real process ------------------------------------------------------

SPE = None  # steps per epoch, measured by the reference run


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=6, n_fg=4, positions=2, size=32)


def train_args(data: Path, run: Path) -> list[str]:
    return ["train", "--task", "joint", "--data", str(data), "--run-dir", str(run), "--batch-size", "2", "--size",
            "32", "--workers", "0", "--epochs", "2", "--deterministic", "--checkpoint-interval", "1e9",
            "--second-shot", "off"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, syn) -> dict:
    from eva_helpers.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("whole") / "run"
        assert main(train_args(syn, run)) == 0
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(run / "checkpoints" / "last.pt")


class Progress:
    """Reads a child's stderr as it comes (tqdm redraws with \\r), remembering every line and the bar's position."""

    BAR = re.compile(r"epoch (\d+)/\d+:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.text, self.position = proc, "", None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            self.text += chunk.decode(errors="replace")
            found = self.BAR.findall(self.text[-2000:])
            if found:
                self.position = tuple(int(v) for v in found[-1])

    def lines(self) -> list[str]:
        self.thread.join(timeout=30)
        return [ln.strip() for ln in re.split(r"[\r\n]", self.text) if ln.strip() and "%|" not in ln]  # not bars


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_eva_train_stopped_mid_epoch_saves_that_step_and_resumes_to_the_same_weights(tmp_path, syn, uninterrupted,
                                                                                    signum):
    from eva_helpers.cli import main

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "eva_helpers.cli", *train_args(syn, run)], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    progress = Progress(proc)
    try:
        deadline = time.monotonic() + 90
        while not (progress.position and 0 < progress.position[1] < progress.position[2]):  # mid-epoch, by the bar
            assert proc.poll() is None and time.monotonic() < deadline, progress.text[-2000:]
            time.sleep(0.01)
        os.kill(proc.pid, signum)  # the process only, as a runtime or a scheduler (or the Stop button) does
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = progress.lines()
    assert rc == 128 + signum, progress.text[-2000:]
    assert "Traceback" not in progress.text
    last = run / "checkpoints" / "last.pt"
    said = [ln for ln in lines if "stopped by" in ln]
    assert len(said) == 1 and said[0].startswith("eva train: stopped by SIG") and f"saved {last}" in said[0]
    ck = load_checkpoint(last)
    steps_per_epoch = uninterrupted["global_step"] // 2
    assert 0 < ck["global_consumed"] and ck["global_step"] % steps_per_epoch != 0  # saved mid-epoch, at that step
    assert f"at step {ck['global_step']} " in said[0]
    assert read_sidecar(last)["global_step"] == ck["global_step"]
    assert not (run / ".eva-lease.json").exists()
    assert main(train_args(syn, run)) == 0  # the rerun resumes from it
    assert_same_training(uninterrupted, load_checkpoint(last))


# --- `eva build`: SIGTERM keeps the verified shards; workers die with their parent ----------------------------------

def children(pid: int) -> set[int]:
    """Direct children of `pid` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def shards_listed(out: Path) -> list[dict]:
    try:
        return json.loads((out / "manifest.json").read_text()).get("shards", [])
    except (OSError, ValueError):
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_build_workers_die_with_their_parent(tmp_path, signum):
    from eva_helpers.paths import sample_assets

    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "eva_helpers.cli", "build", "--bg", str(sample_assets() / "bg"), "--fg",
           str(sample_assets() / "fg"), "--out", str(out), "--size", "64", "--positions", "12", "--shard-size", "32",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    err = Progress(proc)
    try:
        deadline = time.monotonic() + 90
        while not (len(shards_listed(out)) >= 1 and len(children(proc.pid)) >= 2):  # mid-build, both workers up
            assert proc.poll() is None and time.monotonic() < deadline, err.text[-2000:]
            time.sleep(0.02)
        workers = children(proc.pid)
        kept = shards_listed(out)
        os.kill(proc.pid, signum)  # the main process only: its workers get no signal from us
        rc = proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in workers if alive(p)]
    finally:
        for p in children(proc.pid) | workers if "workers" in locals() else set():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert not left, f"worker processes {left} outlived their parent by 10 s"
    assert rc == -signal.SIGKILL if signum == signal.SIGKILL else rc == 143, err.text[-2000:]
    if signum == signal.SIGTERM:  # Ctrl-C's path: one line, no traceback, the verified shards kept
        lines = err.lines()
        assert "Traceback" not in err.text and lines == [lines[0]] and "stopped by SIGTERM" in lines[0], err.text
        listed = {e["file"] for e in shards_listed(out)}
        assert {e["file"] for e in kept} <= listed
        assert json.loads((out / "manifest.json").read_text())["complete"] is False
