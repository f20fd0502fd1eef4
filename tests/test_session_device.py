"""A run that a GPU trained does not go on silently on a CPU runtime, and every device that trained it is on record.

There is no GPU here: a CUDA session is faked by monkeypatching torch.cuda (is_available, get_device_properties,
get_device_capability), which is all `sessions.describe_device` and `precision.amp_dtype` read."""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import write_synthetic_dataset  # noqa: E402

from eva_helpers.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
T4 = ("Tesla T4", 15.0, (7, 5))
A100 = ("NVIDIA A100-SXM4-40GB", 39.4, (8, 0))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=6, n_fg=2, positions=2, size=32)


def fake_gpu(mp: pytest.MonkeyPatch, gpu: tuple[str, float, tuple[int, int]]) -> None:
    """This runtime as Colab's `gpu` runtime looks to torch."""
    name, gib, cap = gpu
    props = SimpleNamespace(name=name, total_memory=int(gib * 2**30), major=cap[0], minor=cap[1])
    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    mp.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)


def record_cuda_session(mp: pytest.MonkeyPatch, run: Path, gpu, epoch: int = 0) -> None:
    """What fit records when a session on `gpu` starts training `run` at `epoch`."""
    from eva_helpers import precision
    from eva_helpers.training.sessions import record_session

    with mp.context() as m:
        fake_gpu(m, gpu)
        record_session(run, torch.device("cuda"), precision.amp_dtype("cuda"), epoch=epoch, step=epoch * 3)


def train_args(data: Path, run: Path, epochs: int) -> list[str]:
    return ["train", "--task", "mask", "--data", str(data), "--run-dir", str(run), "--batch-size", "8", "--size", "32",
            "--workers", "0", "--epochs", str(epochs), "--second-shot", "off"]


def notebook_cfg(data: Path, run: Path, epochs: int):
    from eva_helpers.training.config import TrainConfig

    return TrainConfig(task="mask", data=str(data), run_dir=str(run), batch_size=8, size=32, workers=0,
                       epochs=epochs, second_shot="off", progress=False)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def devices(run: Path) -> list[tuple]:
    return [(s["device"], s.get("gpu"), s.get("capability"), s["precision"], s["from_epoch"])
            for s in json.loads((run / "sessions.json").read_text())]


def test_a_run_started_on_cuda_stops_on_a_cpu_runtime_unless_allowed(tmp_path, data, monkeypatch, capsys):
    """(Failed before: a reconnect that landed on a CPU runtime trained on at CPU speed, saying nothing.)"""
    from eva_helpers.colab.notebook_train import train
    from eva_helpers.errors import EvaError

    run = tmp_path / "mask-run"
    assert main(train_args(data, run, 1)) == 0  # the first epoch (trained here on the CPU, recorded below as a T4's)
    assert devices(run) == [("cpu", None, None, "fp32", 0)]
    (run / "sessions.json").unlink()
    record_cuda_session(monkeypatch, run, T4)  # ... as the T4 session that trained it wrote its record
    rows = [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines()]
    (run / "history.jsonl").write_text("".join(json.dumps({**r, "samples_per_s": 1e6}) + "\n" for r in rows))
    before = snapshot(run)
    capsys.readouterr()

    with pytest.raises(EvaError) as e:  # notebook: "Run all" on the CPU runtime Colab handed out
        train(notebook_cfg(data, run, 2))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mask-run: trained on CUDA (Tesla T4) so far, this runtime has no GPU")
    assert "Runtime > Change runtime type" in msg and "ALLOW_CPU = True" in msg
    assert re.search(r"about \d+ times slower", msg), msg
    assert "estimate:" not in capsys.readouterr().out  # refused first: no time estimate, no lease watch
    assert snapshot(run) == before

    assert main(train_args(data, run, 2)) == 2  # the CLI the same, in one line naming its flag
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Tesla T4" in err[0] and "--allow-cpu" in err[0], err
    assert snapshot(run) == before

    train(notebook_cfg(data, run, 2), allow_cpu=True)  # ALLOW_CPU = True: on purpose
    out = capsys.readouterr().out
    assert "trained so far on Tesla T4 (15.0 GiB, compute 7.5, fp16); this session trains on cpu (fp32)" in out
    assert devices(run) == [("cuda", "Tesla T4", "7.5", "fp16", 0), ("cpu", None, None, "fp32", 1)]
    assert train(notebook_cfg(data, run, 2))["finished"]  # nothing left to train: reported, not refused


def test_the_cli_allows_the_cpu_with_a_flag_and_an_explicit_device(tmp_path, data, monkeypatch):
    run = tmp_path / "run"
    record_cuda_session(monkeypatch, run, T4)
    assert main(train_args(data, run, 1)) == 2
    assert main(train_args(data, run, 1) + ["--allow-cpu"]) == 0
    assert devices(run)[-1][:4] == ("cpu", None, None, "fp32")
    record_cuda_session(monkeypatch, run, A100, epoch=1)
    assert main(train_args(data, run, 2) + ["--device", "cpu"]) == 0  # asked for by name: not a silent fall-back


def test_the_session_record_lists_each_device_and_precision_that_trained_the_run(tmp_path, data, monkeypatch,
                                                                                  capsys):
    """A T4 (fp16) session, then an A100 (bf16) one, then the CPU: each is in sessions.json beside code.json, and each
    switch is said when it happens. (Failed before: no record of the device at all.)"""
    from eva_helpers.colab.notebook_train import train

    run = tmp_path / "joint"
    record_cuda_session(monkeypatch, run, T4)
    record_cuda_session(monkeypatch, run, T4)  # the same process and GPU again (the cell run twice): one record
    assert len(devices(run)) == 1
    record_cuda_session(monkeypatch, run, A100, epoch=1)
    assert "trained so far on Tesla T4 (15.0 GiB, compute 7.5, fp16); this session trains on NVIDIA A100-SXM4-40GB " \
           "(39.4 GiB, compute 8.0, bf16) from epoch 2" in capsys.readouterr().out
    train(notebook_cfg(data, run, 1), allow_cpu=True)
    assert devices(run) == [("cuda", "Tesla T4", "7.5", "fp16", 0), ("cuda", "NVIDIA A100-SXM4-40GB", "8.0", "bf16", 1),
                            ("cpu", None, None, "fp32", 0)]
    rec = json.loads((run / "sessions.json").read_text())
    assert rec[0]["memory_gib"] == 15.0 and rec[1]["memory_gib"] == 39.4
    assert {"code.json", "sessions.json"} <= {p.name for p in run.iterdir()}


def test_the_banner_shows_the_gpu_its_compute_capability_and_the_precision_training_uses(monkeypatch):
    from eva_helpers.colab.session import environment

    fake_gpu(monkeypatch, T4)
    gpu = environment()["gpu"]
    assert gpu.startswith("Tesla T4 (15.0 GiB)") and "compute 7.5" in gpu and "trains in fp16" in gpu, gpu


@pytest.mark.parametrize("name", ["03_train_mask", "04_train_depth", "05_train_joint"])
def test_the_train_notebooks_offer_allow_cpu(name):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    src = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(re.search(r"^ALLOW_CPU = False  #@param", s, re.M) for s in src)
    assert any("allow_cpu=ALLOW_CPU" in s and "nt.train(" in s for s in src)
