"""One writer per folder: a second `eva train` (or `eva build`) into a folder a live process writes stops at once in
one line naming the holder; a stale lease (dead pid on this host, or no heartbeat for STALE_S) is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import write_synthetic_dataset  # noqa: E402

from eva_helpers import lease# noqa: E402
from eva_helpers.lease import LEASE_NAME, LeaseHeldError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def other_process():
    """A live process on this host that is not us (the holder of a lease in a test)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def write_lease(folder: Path, **fields) -> dict:
    now = time.time()
    record = {"what": "training", "host": socket.gethostname(), "pid": os.getpid(), "proc_start": None,
              "started": now - 100, "heartbeat": now, "token": "theirs", **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LEASE_NAME).write_text(json.dumps(record))
    return record


def test_a_live_holder_refuses_a_second_writer_in_one_line(tmp_path, other_process):
    write_lease(tmp_path, pid=other_process.pid, proc_start=lease._proc_start(other_process.pid))
    before = (tmp_path / LEASE_NAME).read_bytes()
    with pytest.raises(LeaseHeldError) as e:
        lease.acquire(tmp_path, "training")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: another training is writing here")
    assert f"host {socket.gethostname()}, pid {other_process.pid}, since " in msg
    assert (tmp_path / LEASE_NAME).read_bytes() == before  # the holder's lease is untouched


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lease(tmp_path, pid=gone.pid, heartbeat=time.time())  # a fresh heartbeat, but its process is gone
    held = lease.acquire(tmp_path, "training")
    try:
        err = capsys.readouterr().err
        assert "taking over" in err and f"pid {gone.pid}" in err and "no longer runs" in err
        assert len(err.strip().splitlines()) == 1
        assert json.loads((tmp_path / LEASE_NAME).read_text())["pid"] == os.getpid()
    finally:
        held.release()
    assert not (tmp_path / LEASE_NAME).exists()


def test_another_host_counts_until_its_heartbeat_is_stale(tmp_path, capsys):
    write_lease(tmp_path, host="another-runtime", pid=12345, heartbeat=time.time() - 10)
    with pytest.raises(LeaseHeldError, match="host another-runtime, pid 12345"):
        lease.acquire(tmp_path, "training")
    write_lease(tmp_path, host="another-runtime", pid=12345, heartbeat=time.time() - lease.STALE_S - 5)
    held = lease.acquire(tmp_path, "training")
    held.release()
    assert "no heartbeat for" in capsys.readouterr().err


def test_the_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    held = lease.acquire(tmp_path / "new", "training", heartbeat_s=0.05)
    try:
        first = json.loads((tmp_path / "new" / LEASE_NAME).read_text())
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
        time.sleep(0.3)
        assert json.loads((tmp_path / "new" / LEASE_NAME).read_text())["heartbeat"] > first["heartbeat"]
        write_lease(tmp_path / "new", host="another-runtime", pid=4242)  # we were thought gone
        deadline = time.monotonic() + 5
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LeaseHeldError, match="took this folder over"):
            held.check()
    finally:
        held.release()
    assert json.loads((tmp_path / "new" / LEASE_NAME).read_text())["pid"] == 4242  # theirs is left alone


def test_a_second_build_into_a_folder_being_built_is_refused(tmp_path, other_process, capsys):
    from eva_helpers.cli import main
    from eva_helpers.paths import sample_assets

    out = tmp_path / "ds"
    write_lease(out, what="dataset build", pid=other_process.pid)
    assert main(["build", "--bg", str(sample_assets() / "bg"), "--fg", str(sample_assets() / "fg"), "--out", str(out),
                 "--size", "32", "--positions", "1", "--limit", "8", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "another dataset build is writing here" in err and f"pid {other_process.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == [LEASE_NAME]  # nothing written


@pytest.mark.slow
def test_a_second_eva_train_on_a_live_run_folder_stops_within_60_s(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ds", n_bg=4, n_fg=2, positions=1, size=32)
    run, gate = tmp_path / "run", tmp_path / "gate"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    gate.touch()  # the first trainer waits mid-epoch until the second one has been turned away
    first = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_tiny.py"), "--run-dir", str(run), "--gate",
                              str(gate), "--interval", "1e9"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "config.json").exists():  # written once the first run holds the lease and passed its checks
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "eva_helpers.cli", "train", "--task", "joint", "--data",
                                 str(data), "--run-dir", str(run), "--size", "32", "--epochs", "1"],
                                env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert first.poll() is None
        gate.unlink()
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert second.returncode != 0 and took < 60
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another training is writing here" in lines[0], second.stderr
    assert f"pid {first.pid}" in lines[0] and f"host {socket.gethostname()}" in lines[0]
    assert first.returncode == 0 and "DONE 18 True" in out, err  # the first run finished normally
    assert not (run / LEASE_NAME).exists()


def test_fit_into_a_run_folder_a_live_trainer_holds_writes_nothing(tmp_path, other_process):
    import torch

    from _tiny import run_tiny

    record = write_lease(tmp_path, pid=other_process.pid, proc_start=lease._proc_start(other_process.pid))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {other_process.pid}"):
            run_tiny(tmp_path, n=8, val=0, epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_NAME]  # no config, no checkpoint: nothing trained
    assert json.loads((tmp_path / LEASE_NAME).read_text()) == record
