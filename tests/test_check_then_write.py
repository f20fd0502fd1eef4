"""Check everything, then write: a refused `eva train` or `eva build` leaves its folder byte for byte as it was (no
config rewritten for epochs never trained, no extension recorded that never happened), and the original command
still runs afterwards."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import write_synthetic_dataset  # noqa: E402

from eva_helpers.cli import main  # noqa: E402
from eva_helpers.lease import FENCE_NAME  # noqa: E402


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's path (relative) and sha256: what a refusal must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=6, n_fg=2, positions=2, size=32)


def train_args(data: Path, run: Path, epochs: int, task: str = "joint") -> list[str]:
    return ["train", "--task", task, "--data", str(data), "--run-dir", str(run), "--batch-size", "8", "--size", "32",
            "--workers", "0", "--epochs", str(epochs), "--second-shot", "off"]


def test_refused_extension_with_unusable_run_stats_writes_nothing(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(train_args(data, run, 1)) == 0
    stats = json.loads((run / "stats.json").read_text())
    stats["bg"]["std"] = [0.0, 0.0, 0.0]  # damaged: every input would be NaN
    (run / "stats.json").write_text(json.dumps(stats))
    before = snapshot(run)
    capsys.readouterr()
    assert main(train_args(data, run, 2)) == 2
    err = capsys.readouterr().err
    assert "stats.json" in err and "unusable" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before  # config.json still says 1 epoch; no extensions.json
    assert main(train_args(data, run, 1)) == 0  # the original command: a finished run, reported (not "shortening")


def test_refused_checkpoint_of_another_model_writes_nothing(tmp_path, data, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert main(train_args(data, run, 1)) == 0
    assert main(train_args(data, other, 1, task="mask")) == 0
    ck = run / "checkpoints"
    own = tmp_path / "own"
    shutil.copytree(ck, own)
    for name in ("last.pt", "last.pt.sha256"):  # another run's checkpoint copied in by mistake
        shutil.copy(other / "checkpoints" / name, ck / name)
    before = snapshot(run)
    capsys.readouterr()
    assert main(train_args(data, run, 2)) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "other settings" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before
    shutil.rmtree(ck)
    shutil.copytree(own, ck)  # the user puts the run's own checkpoint back
    assert main(train_args(data, run, 1)) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_refused_build_on_an_existing_dataset_writes_nothing(tmp_path, capsys):
    from eva_helpers.paths import sample_assets

    bg, fg, out = sample_assets() / "bg", sample_assets() / "fg", tmp_path / "ds"
    args = ["build", "--bg", str(bg), "--fg", str(fg), "--out", str(out), "--size", "32", "--positions", "1",
            "--no-flips", "--limit", "16", "--shard-size", "8", "--workers", "1"]
    assert main(args) == 0
    before = snapshot(out)
    for bad in (["--size", "48"], ["--jpeg-quality", "0"], ["--scale-range", "0.9,0.1"]):
        capsys.readouterr()
        assert main(args + bad) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert snapshot(out) == before
    assert main(args) == 0  # the original command: the same dataset, verified (a new lease: its number moved on)
    assert {k: v for k, v in snapshot(out).items() if k != FENCE_NAME} == {k: v for k, v in before.items()
                                                                           if k != FENCE_NAME}


def test_a_refused_first_command_leaves_no_folder_behind(tmp_path, data):
    """The lease creates the run folder; a command refused before writing anything removes it again."""
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "shards" / "shard-00000.zip").write_bytes(b"damaged")
    run = tmp_path / "new-run"
    assert main(train_args(bad, run, 1)) == 2
    assert not run.exists()


def _notebook_cfg(data: Path, run: Path, epochs: int, size: int = 32):
    from eva_helpers.training.config import TrainConfig

    return TrainConfig(task="joint", data=str(data), run_dir=str(run), batch_size=8, size=size, workers=0,
                       epochs=epochs, second_shot="off", progress=False)


def test_a_refused_notebook_training_leaves_no_records(tmp_path, data):
    """Notebook training records the code and the dataset in the run folder (code.json, dataset.json) only once fit's
    checks have passed. (Failed before: they were written first, so a refused run left them behind.)"""
    from eva_helpers.errors import EvaError
    from eva_helpers.colab.notebook_train import train

    fresh = tmp_path / "fresh"
    with pytest.raises(EvaError, match="multiples of"):
        train(_notebook_cfg(data, fresh, 1, size=40))  # refused by fit before it claims the folder
    assert not fresh.exists()

    run = tmp_path / "run"
    assert main(train_args(data, run, 1)) == 0
    stats = json.loads((run / "stats.json").read_text())
    stats["bg"]["std"] = [0.0, 0.0, 0.0]
    (run / "stats.json").write_text(json.dumps(stats))
    before = snapshot(run)
    with pytest.raises(EvaError, match="stats.json"):
        train(_notebook_cfg(data, run, 2))  # refused by fit's checks on a run it has claimed
    assert snapshot(run) == before

    train(_notebook_cfg(data, tmp_path / "ok", 1))
    assert {"code.json", "dataset.json", "config.json"} <= {p.name for p in (tmp_path / "ok").iterdir()}
