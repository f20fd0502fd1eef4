"""One writer per folder: a second `eva train` (or `eva build`) into a folder a live process writes stops in one line
naming the holder; a stale lease (a dead or frozen pid on this host, another host's heartbeat silent for STALE_S as
watched here, a damaged file) is taken over, by exactly one taker; a writer that lost its lease writes nothing more."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import write_synthetic_dataset  # noqa: E402

from eva_helpers import lease  # noqa: E402
from eva_helpers.lease import FENCE_NAME, LEASE_NAME, LeaseHeldError  # noqa: E402

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
    (folder / "lease.tmp").write_text(json.dumps(record))
    os.replace(folder / "lease.tmp", folder / LEASE_NAME)  # as the holder writes it: a reader never sees half
    return record


def test_a_live_holder_refuses_a_second_writer_in_one_line(tmp_path, other_process):
    write_lease(tmp_path, pid=other_process.pid, proc_start=lease.proc_start(other_process.pid))
    before = (tmp_path / LEASE_NAME).read_bytes()
    with pytest.raises(LeaseHeldError) as e:
        lease.acquire(tmp_path, "training")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: another training is writing here")
    assert f"host {socket.gethostname()}, pid {other_process.pid}, lease #0, since " in msg
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


def _beating(folder: Path, stop, every_s: float = 0.05, **fields) -> None:
    """Another host's live holder: its heartbeat counter changes every `every_s` (its clock is `fields`' business)."""
    beats = 0
    while not stop.is_set():
        beats += 1
        write_lease(folder, beats=beats, **fields)
        stop.wait(every_s)


def test_another_host_is_watched_by_its_heartbeat_counter_not_its_clock(tmp_path, capsys):
    """Issue 28: a host whose clock runs 200 s behind had its live lease taken over; one 600 s ahead printed "last
    heartbeat -585 s ago". Staleness is now the counter not changing while this process watches (its own clock)."""
    import threading

    stop = threading.Event()
    write_lease(tmp_path, host="another-runtime", pid=12345, heartbeat=time.time() - 200)
    behind = threading.Thread(target=_beating, args=(tmp_path, stop), daemon=True,
                              kwargs={"host": "another-runtime", "pid": 12345, "heartbeat": time.time() - 200})
    behind.start()
    try:
        with pytest.raises(LeaseHeldError, match="host another-runtime, pid 12345.*heartbeat changed"):
            lease.acquire(tmp_path, "training", stale_s=2.0, progress=False)
    finally:
        stop.set()
        behind.join()
    capsys.readouterr()
    write_lease(tmp_path, host="another-runtime", pid=12345, heartbeat=time.time() + 600)  # silent, clock ahead
    t0 = time.monotonic()
    held = lease.acquire(tmp_path, "training", stale_s=0.5, progress=False)
    waited = time.monotonic() - t0
    held.release()
    err = capsys.readouterr().err
    assert 0.5 <= waited < 5 and "taking over" in err
    assert not re.search(r"-\d+ s", err), err  # no age computed across two clocks
    assert len(err.strip().splitlines()) == 1


def test_a_reconnect_counts_down_then_takes_over_unless_forced(tmp_path, capsys):
    """Issue 28: a new runtime meeting the old runtime's lease waits with a countdown naming the holder (then takes
    over); FORCE_TAKEOVER takes over at once."""
    write_lease(tmp_path, host="old-runtime", pid=777, heartbeat=time.time() - 5)
    held = lease.acquire(tmp_path, "training", stale_s=0.6)
    held.release()
    err = capsys.readouterr().err
    assert "waiting for a heartbeat of old-runtime pid 777" in err and "s left before taking over" in err
    write_lease(tmp_path, host="old-runtime", pid=777, heartbeat=time.time() - 5)
    t0 = time.monotonic()
    held = lease.acquire(tmp_path, "training", stale_s=60, force=True)
    assert time.monotonic() - t0 < 5
    held.release()
    assert "FORCE_TAKEOVER" in capsys.readouterr().err


def test_the_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    held = lease.acquire(tmp_path / "new", "training", heartbeat_s=0.05)
    try:
        first = json.loads((tmp_path / "new" / LEASE_NAME).read_text())
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid() and first["fence"] == 1
        time.sleep(0.3)
        now = json.loads((tmp_path / "new" / LEASE_NAME).read_text())
        assert now["heartbeat"] > first["heartbeat"] and now["beats"] > first["beats"]
        (tmp_path / "new" / FENCE_NAME).write_text(f"{held.fence + 1}\n")  # we were thought gone: taken over
        write_lease(tmp_path / "new", host="another-runtime", pid=4242, fence=held.fence + 1)
        deadline = time.monotonic() + 5
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LeaseHeldError, match="took this folder over"):
            held.check()
    finally:
        held.release()
    assert json.loads((tmp_path / "new" / LEASE_NAME).read_text())["pid"] == 4242  # theirs is left alone


def test_confirm_stops_a_writer_whose_folder_a_newer_lease_wrote(tmp_path):
    """The fence file: a newer lease that took over, wrote and released still stops the old writer."""
    old = lease.acquire(tmp_path, "training", heartbeat_s=60)
    old.confirm()  # the first confirm records its number
    assert json.loads((tmp_path / FENCE_NAME).read_text()) == old.fence == 1
    (tmp_path / LEASE_NAME).unlink()  # as if taken over, written and released while `old` was paused
    (tmp_path / FENCE_NAME).write_text("2\n")
    with pytest.raises(LeaseHeldError, match="stopped without writing more"):
        old.confirm()
    old.release()


def test_an_older_writers_record_does_not_unseat_the_newer_holder(tmp_path):
    """A paused writer that wakes between reading and rewriting its lease writes its old record back: the newer
    holder (a higher fence) keeps the folder and writes its own record again; the old one has lost."""
    new = lease.acquire(tmp_path, "training", heartbeat_s=0.05)
    new.confirm()
    write_lease(tmp_path, host="another-runtime", pid=4242, fence=new.fence - 1)
    new.confirm()
    time.sleep(0.3)
    assert json.loads((tmp_path / LEASE_NAME).read_text())["token"] == new.token and new.lost is None
    assert lease.standing(tmp_path, "theirs", new.fence - 1)[0] is True
    new.release()


DAMAGED = {"heartbeat-null": '{"heartbeat": null}', "heartbeat-yesterday": '{"heartbeat": "yesterday"}',
           "heartbeat-nan": '{"heartbeat": NaN}', "heartbeat-infinity": '{"heartbeat": Infinity}',
           "pid-abc": '{"pid": "abc"}', "started-1e20": '{"started": 1e20}', "not-json": "{ half a lease",
           "a-list": "[1, 2]", "empty": ""}


def write_damaged_lease(folder: Path, kind: str) -> Path:
    """A lease file damaged as `kind` (DAMAGED), old enough not to be one being written this moment."""
    text = DAMAGED[kind]
    if text.startswith("{") and text.endswith("}"):
        record = {"what": "training", "host": socket.gethostname(), "pid": 1, "started": time.time(),
                  "heartbeat": time.time(), "token": "theirs"}
        text = json.dumps(record)[:-1] + ", " + text[1:]  # the damaged field last: it wins over the good one
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEASE_NAME
    path.write_text(text)
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_lease_is_a_stale_lease_said_in_one_line(tmp_path, capsys, kind):
    """Issue 28: these gave a traceback naming no file, and the folder stayed locked."""
    path = write_damaged_lease(tmp_path, kind)
    held = lease.acquire(tmp_path, "training")
    held.release()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "damaged" in lines[0], lines


def _race(folder: str, start, done, wins) -> None:
    try:
        start.wait()
        held = lease.acquire(folder, "training", progress=False)
    except LeaseHeldError:
        done.wait()
        return
    wins.put(held.fence)
    done.wait()  # hold the lease until every taker has judged it
    held.release()


@pytest.mark.slow  # processes racing, each waiting for the others
def test_simultaneous_takeovers_of_a_dead_holder_have_one_winner(tmp_path):
    """Issue 28: two trainers started at once on a dead holder's lease both took over in 2 of 3 trials."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for trial in range(20):
        folder = tmp_path / f"run{trial}"
        write_lease(folder, pid=gone.pid, fence=3)
        start, done, wins = ctx.Barrier(4), ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(folder), start, done, wins)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        winners = []
        while not wins.empty():
            winners.append(wins.get())
        assert winners == [4], f"trial {trial}: {len(winners)} winners"  # one, numbered the dead holder's + 1
        assert sorted(p.name for p in folder.iterdir()) == [FENCE_NAME], list(folder.iterdir())  # no stale copies


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

    record = write_lease(tmp_path, pid=other_process.pid, proc_start=lease.proc_start(other_process.pid))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {other_process.pid}"):
            run_tiny(tmp_path, n=8, val=0, epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_NAME]  # no config, no checkpoint: nothing trained
    assert json.loads((tmp_path / LEASE_NAME).read_text()) == record


def _tiny(run: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "_tiny.py"), "--run-dir", str(run), "--heartbeat", "0.2", "--stale",
            "1.0", "--interval", "1e9", "--epochs", "2", *args]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_paused_writer_that_lost_its_lease_writes_nothing_when_it_wakes(tmp_path):
    """Issue 28: trainer A paused in validation, B took over after STALE_S, A continued and wrote history.jsonl, last.pt
    and best.pt within 4 s; the folder ended with B's last.pt beside A's prev.pt and best.pt. Now A stops before its
    first write, every file is B's, and a resume says whose checkpoint it loads."""
    run, gate = tmp_path / "run", tmp_path / "gate"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    gate.touch()
    a = subprocess.Popen(_tiny(run, "--val-gate", str(gate)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(str(gate) + ".reached").exists():  # A is validating its first epoch
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        os.kill(a.pid, signal.SIGSTOP)
        time.sleep(1.5)  # its heartbeat is now older than the 1 s STALE_S of this test
        b = subprocess.run(_tiny(run, "--max-steps", "8"), env=env, capture_output=True, text=True, timeout=120)
        assert b.returncode == 0 and "DONE 8 False" in b.stdout, b.stderr
        assert "taking over" in b.stderr and f"pid {a.pid}" in b.stderr and "paused or frozen" in b.stderr
        b_pid = int(b.stdout.split("START ")[1].split()[0])
        written_by_b = _files(run)
        gate.unlink()
        os.kill(a.pid, signal.SIGCONT)
        a_out, a_err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    lines = [ln for ln in a_err.splitlines() if ln.strip()]
    assert a.returncode == 2 and len(lines) == 1, a_err
    assert "took this folder over" in lines[0] and "stopped without writing more" in lines[0], lines[0]
    assert _files(run) == written_by_b  # A wrote nothing once it woke
    for sidecar in (run / "checkpoints").glob("*.sha256"):
        assert json.loads(sidecar.read_text())["writer"]["pid"] == b_pid, sidecar.name
    c = subprocess.run(_tiny(run), env=env, capture_output=True, text=True, timeout=120)
    assert c.returncode == 0 and "DONE 12 True" in c.stdout, c.stderr
    assert f"written by host {socket.gethostname()} pid {b_pid} under lease #2)" in c.stdout, c.stdout
