"""A user's Colab journey, simulated: a fake `google.colab` (drive.mount / flush_and_unmount, userdata, files) and a
Drive root in a temp folder. The install cell's REF exists, the Drive fallback takes the newest copy, a stale import
stops the cell, code is recorded per run; a rebuilt dataset keeps its run folder and is refused there; nothing is
written to Drive after finish() unmounted it; a build says what it costs and refuses when Drive is full; notebook 05
waits for no upload, compares only matching runs and keeps the user's dataset list on Drive; the README says no more
than is known."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from eva_helpers.colab import install as ci
from eva_helpers.errors import EvaError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """Colab as the notebooks see it: google.colab importable, Drive mounted at a temp folder by drive.mount and
    unmounted by flush_and_unmount (os.path.ismount answers from that state)."""
    from eva_helpers import paths as P

    mount = tmp_path / "content" / "drive"
    state = {"mounted": False, "uploads": 0}

    def do_mount(where, *a, **k):
        assert Path(where) == mount
        (mount / "MyDrive").mkdir(parents=True, exist_ok=True)
        state["mounted"] = True

    def unmount():
        state["mounted"] = False

    def upload():
        state["uploads"] += 1
        raise AssertionError("files.upload() waits for the user: Run all would hang here")

    colab_mod = types.ModuleType("google.colab")
    colab_mod.drive = types.SimpleNamespace(mount=do_mount, flush_and_unmount=unmount)
    colab_mod.files = types.SimpleNamespace(upload=upload)
    colab_mod.userdata = types.SimpleNamespace(get=lambda name: state.get("secret", ""))
    google = types.ModuleType("google")
    google.colab = colab_mod
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab_mod)
    monkeypatch.setattr(P, "DRIVE_MOUNT", mount)
    monkeypatch.setattr(P, "_is_mount", lambda p: state["mounted"] and Path(p) == mount)
    monkeypatch.setattr("eva_helpers.fetching.catalogue.DRIVE_HOME", mount / "MyDrive")
    monkeypatch.delenv("EVA_HOME", raising=False)
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "content" / "eva_cache"))
    monkeypatch.chdir(tmp_path)
    P.mark_drive_unmounted(False)
    yield types.SimpleNamespace(mount=mount, state=state)
    P.mark_drive_unmounted(False)


# ---- 1. the install cell ------------------------------------------------------------------------------------------
def _ref(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    src = "".join(next(c for c in cells if c["cell_type"] == "code" and "ensure_installed" in "".join(c["source"]))
                  ["source"])
    return re.search(r'^REF = "([^"]*)"', src, re.M).group(1)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_ref_in_the_install_cells_resolves_with_git_rev_parse(nb):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    ref = _ref(nb)
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                       capture_output=True, text=True)
    assert ref and r.returncode == 0, f"{nb.name}: REF = {ref!r} is not a branch, tag or commit of this repository"


def test_drive_fallback_takes_the_newest_version_and_says_it_is_not_ref(tmp_path, monkeypatch):
    for v in ("0.9.0", "0.10.0", "0.2.0"):
        (tmp_path / f"eva_maskdepth-{v}-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "eva-maskdepth-0.9.zip").write_bytes(b"")
    (tmp_path / "eva-maskdepth-0.11.zip").write_bytes(b"")
    names = [Path(p).name for p in ci.drive_candidates(tmp_path)]
    assert names == ["eva_maskdepth-0.10.0-py3-none-any.whl", "eva_maskdepth-0.9.0-py3-none-any.whl",
                     "eva_maskdepth-0.2.0-py3-none-any.whl", "eva-maskdepth-0.11.zip", "eva-maskdepth-0.9.zip"]
    monkeypatch.setattr(ci.md, "version", lambda dist: "0.10.0")
    assert "not REF = 'v0.9.0'" in ci._drive_copy_note(names[0], "v0.9.0", "x")
    assert "instead of REF = 'main'" in ci._drive_copy_note(names[0], "main", "x")


def test_pip_changing_an_imported_package_stops_the_cell(monkeypatch):
    """Run all must not go on with the old numpy in memory: the install raises SystemExit, not just a print."""
    import numpy  # noqa: F401  # imported in this process, as in a notebook that ran a cell before
    versions = iter([{"numpy": "1.0"}, {"numpy": "2.0", "evafake": "1"}])
    found = iter([False, True])
    monkeypatch.setattr(ci, "installed", lambda module="": next(found))
    monkeypatch.setattr(ci, "_versions", lambda: next(versions))
    monkeypatch.setattr(ci, "pip_install", lambda *a, **k: True)
    log = []
    with pytest.raises(SystemExit, match="Restart session"):
        ci.ensure_installed("https://example.invalid/x", "main", "/nonexistent", mount=False, module="evafake",
                            dist="evafake", log=log.append)
    assert "numpy" in "\n".join(log)


def test_private_repository_uses_colab_secrets_never_a_pasted_token(colab, monkeypatch):
    text = ci.help_message("https://github.com/o/r", "main", "/d")
    assert "Secrets" in text and 'userdata.get("GITHUB_TOKEN")' in text and "<token>@" not in text
    colab.state["secret"] = "s3cret-token"
    tried, log = [], []

    def pip(target, constraints, python, extra, log_, secret=""):
        tried.append(target)
        log_(f"installing {target.replace(secret, '***') if secret else target}")
        return "s3cret-token@" in target

    monkeypatch.setattr(ci, "pip_install", pip)
    found = iter([False, True])
    monkeypatch.setattr(ci, "installed", lambda module="": next(found))
    assert ci.ensure_installed("https://github.com/o/r", "main", "/d", mount=False, log=log.append)
    assert tried == ["eva-maskdepth @ git+https://github.com/o/r@main",
                     "eva-maskdepth @ git+https://x-access-token:s3cret-token@github.com/o/r@main"]
    assert "s3cret" not in "\n".join(log)


def test_each_run_records_the_code_and_a_reconnect_with_newer_code_is_seen(tmp_path, monkeypatch, capsys):
    from eva_helpers.training import run_folder as nt

    monkeypatch.setattr("eva_helpers.training.run_folder.installed_code", lambda: {"version": "0.1.0", "commit": "a" * 40})
    nt.record_code(tmp_path)
    nt.record_code(tmp_path)  # the same code again: nothing to add, nothing to say
    assert "other code" not in capsys.readouterr().out
    monkeypatch.setattr("eva_helpers.training.run_folder.installed_code", lambda: {"version": "0.1.1", "commit": "b" * 40})
    nt.record_code(tmp_path)
    out = capsys.readouterr().out
    assert "0.1.0, commit aaaaaaaaaaaa" in out and "0.1.1, commit bbbbbbbbbbbb" in out
    assert [e["commit"][0] for e in json.loads((tmp_path / "code.json").read_text())] == ["a", "b"]


# ---- 3. run folders that stay put --------------------------------------------------------------------------------
def _record_config(run_dir: Path, cfg) -> None:
    """What fit writes once its checks pass: config.json (with the dataset identity), code.json, dataset.json."""
    from eva_helpers.training.checkpoint import CheckpointManager
    from eva_helpers.training.run_folder import check_config, start_writing

    start_writing(run_dir, CheckpointManager(run_dir, is_main=False), check_config(run_dir, cfg)[0], None, None)


def _fake_fit(monkeypatch):
    """fit's records of the run (config.json with the dataset identity, code.json, dataset.json), without the
    training."""

    def fit(cfg, on_start=None, force_takeover=False):
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        if on_start is not None:
            on_start(Path(cfg.run_dir))
        _record_config(Path(cfg.run_dir), cfg)
        return {"finished": True, "global_step": 6, "epochs_completed": cfg.epochs, "best": None}

    monkeypatch.setattr("eva_helpers.colab.notebook_train.fit", fit)
    monkeypatch.setattr("eva_helpers.colab.notebook_train.estimate_training", lambda *a, **k: 0.0)


def test_a_rebuilt_drive_dataset_keeps_its_run_folder_and_is_refused_there(colab, sample_dataset, monkeypatch, capsys):
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.colab.notebook import dataset_for
    from eva_helpers.colab.notebook_train import train
    from eva_helpers.paths import sample_assets
    from eva_helpers.colab.runs import notebook_config
    from eva_helpers.colab.session import start

    _fake_fit(monkeypatch)
    paths = start()
    assert paths.on_drive and colab.mount in paths.root.parents
    shutil.copytree(sample_dataset, paths.data / "my-dataset")  # what notebook 01 built on Drive
    data_dir = dataset_for("my-dataset", paths)
    assert data_dir.name == "my-dataset" and not str(data_dir).startswith(str(colab.mount))  # local copy, same name
    assert "estimate: copying" in capsys.readouterr().out
    cfg = notebook_config("mask", data_dir, paths, True)
    assert Path(cfg.run_dir).name == "mask-unet_small-32px-my-dataset"
    train(cfg)
    assert (Path(cfg.run_dir) / "dataset.json").is_file() and (Path(cfg.run_dir) / "code.json").is_file()

    shutil.rmtree(paths.data / "my-dataset")  # rebuilt with other settings under the same name
    build_dataset(sample_assets() / "bg", sample_assets() / "fg", paths.data / "my-dataset", size=32, positions=1,
                  seed=1, shard_size=128, limit=200, workers=1, progress=False)
    again = notebook_config("mask", dataset_for("my-dataset", paths), paths, True)
    assert again.run_dir == cfg.run_dir  # the same folder, not a fresh run somewhere new
    with pytest.raises(EvaError) as e:
        train(again)
    msg = str(e.value)
    assert "\n" not in msg and "samples 384 -> 200" in msg and "seed 0 -> 1" in msg and "RUN_NAME" in msg


# ---- 5. Drive only while mounted ---------------------------------------------------------------------------------
def test_after_finish_nothing_is_written_to_the_unmounted_drive(colab, sample_dataset, monkeypatch):
    from eva_helpers.colab import notebook as nb
    from eva_helpers.colab.notebook_train import train
    from eva_helpers.colab.runs import notebook_config
    from eva_helpers.colab.session import finish, start

    _fake_fit(monkeypatch)
    paths = start()
    cfg = notebook_config("mask", sample_dataset, paths, True)
    assert "flushed" in finish(paths) and not colab.state["mounted"]
    for step in (lambda: train(cfg), lambda: nb.build_plan(paths, True), lambda: nb.dataset_for("my-dataset", paths)):
        with pytest.raises(EvaError, match=r"not mounted \(finish\(\) unmounted it\).*run the environment cell"):
            step()
    assert not Path(cfg.run_dir).exists()  # nothing landed on the local disk under /content/drive
    start()  # the environment cell again: mounted, and training goes on
    train(cfg)
    assert (Path(cfg.run_dir) / "config.json").is_file()


# ---- 8. the cost before starting ---------------------------------------------------------------------------------
def test_build_prints_its_cost_and_refuses_when_drive_is_too_small(colab, monkeypatch, capsys):
    from eva_helpers.compositing import cost as estimate
    from eva_helpers.colab.notebook import build_plan
    from eva_helpers.colab.session import start

    paths = start()
    monkeypatch.setattr(estimate, "free_bytes", lambda folder: 15 * 10**9)  # the free 15 GB of Drive
    build_plan(paths, size=224, positions=20, dataset="small", teacher="geometric")
    out = capsys.readouterr().out
    n = 12 * 16 * 2 * 20  # the sample's photos
    assert f"{n:,} composites in 8 shards" in out and "GB to write" in out and "15.0 GB free" in out
    per = float(re.search(r"\((\d+) kB per composite, measured", out).group(1))
    assert 20 <= per <= 150, per  # measured on the photos at 224 px, not a guess
    with pytest.raises(EvaError, match=r"needs about \d+\.\d GB \(an estimate\) but only 15\.0 GB are free") as e:
        build_plan(paths, size=224, positions=1100, dataset="big", teacher="geometric")  # 422k composites
    assert "POSITIONS" in str(e.value) and not (paths.data / "big").exists()


def test_training_and_evaluation_estimates(sample_dataset, capsys):
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.estimate import estimate_copy
    from eva_helpers.training.cost import estimate_evaluation, estimate_training

    cfg = TrainConfig(task="mask", data=str(sample_dataset), model="unet_small", size=32, batch_size=8, epochs=2)
    timer = lambda cfg, batch: (0.5, 0.1)  # noqa: E731
    assert estimate_training(cfg, 800, 2, timer=timer) >= 200 * 0.5  # 100 steps per epoch, 0.5 s each (or more)
    estimate_evaluation(cfg, 80, timer=timer)
    estimate_copy(2e9, 10)
    out = capsys.readouterr().out
    assert "200 training steps" in out and "evaluating 80 test samples" in out and "copying 2.0 GB in 10 files" in out


# ---- 9. notebook 05 and the user's datasets ----------------------------------------------------------------------
def test_uploads_wait_for_nobody_unless_asked(colab, sample_dataset, capsys):
    from eva_helpers.colab.notebook_train import upload_photo

    bg = upload_photo("step 1", sample_dataset, smoke=False, upload=False)
    assert bg.ndim == 3 and colab.state["uploads"] == 0 and "UPLOAD_PHOTOS is off" in capsys.readouterr().out
    nb05 = json.loads((ROOT / "notebooks" / "05_train_joint.ipynb").read_text())
    params = "".join(nb05["cells"][1]["source"])
    assert "UPLOAD_PHOTOS = False" in params
    assert all("upload=UPLOAD_PHOTOS" in "".join(c["source"]) for c in nb05["cells"]
               if "upload_photo(" in "".join(c["source"]))


def test_comparison_uses_only_matching_runs_and_is_saved(tmp_path, sample_dataset, monkeypatch, capsys):
    from eva_helpers.colab.notebook_train import comparison
    from eva_helpers.paths import mount_drive
    from eva_helpers.colab.runs import notebook_config

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    paths = mount_drive(tmp_path / "home")
    joint = notebook_config("joint", sample_dataset, paths, True)
    for task, epochs in (("mask", 2), ("depth", 1)):  # the mask run of notebook 03 trained longer
        cfg = notebook_config(task, sample_dataset, paths, True, epochs=epochs)
        run = Path(cfg.run_dir)
        run.mkdir(parents=True)
        _record_config(run, cfg if task == "depth" else replace(cfg, epochs=2))
        (run / "summary.json").write_text(json.dumps({"finished": True}))
        (run / "metrics.json").write_text(json.dumps({"mask_iou": 0.9, "depth_rmse": 0.1}))
    comparison(joint, {"mask_iou": 0.5, "depth_rmse": 0.2})
    out = capsys.readouterr().out
    assert "mask-only run" in out and "left out" in out and "epochs: 2 -> 1" in out
    table = (Path(joint.run_dir) / "comparison.md").read_text()
    assert "depth-only" in table and "mask-only" not in table


def test_own_dataset_entries_live_on_drive_beside_the_shipped_list(colab, sample_dataset, capsys):
    from eva_helpers.fetching.catalogue import PACKAGED_DATA_MANIFEST, load_data_manifest, manifest_entry_for
    from eva_helpers.fetching.locate import save_dataset_entry
    from eva_helpers.colab.notebook import dataset_for
    from eva_helpers.colab.session import start

    paths = start()
    shipped = PACKAGED_DATA_MANIFEST.read_bytes()
    mine = colab.mount / "MyDrive" / "elsewhere" / "mine-400k"
    shutil.copytree(sample_dataset, mine)
    path = save_dataset_entry("mine", manifest_entry_for(mine, source_kind="drive_path"), paths)
    assert path == paths.root / "data_manifest.json" and PACKAGED_DATA_MANIFEST.read_bytes() == shipped
    assert "sample" in load_data_manifest().get("datasets", {})  # the shipped sample is still listed
    assert dataset_for("mine", paths).name == "mine"
    with pytest.raises(EvaError, match="ships"):
        save_dataset_entry("sample", {}, paths)


# ---- 10. the README ----------------------------------------------------------------------------------------------
def test_readme_says_only_what_a_user_can_know():
    text = (ROOT / "README.md").read_text()
    for phrase in ("issue 11", "first round", "No GPU was available to this task", "so Drive's trash does not fill",
                   "dataset-<hash"):
        assert phrase.lower() not in text.lower(), phrase
    assert ".[teacher]" in text  # the Depth Anything teacher needs the extra
    demo = next(line for line in text.splitlines() if line.startswith("make demo"))
    assert "downloads" in demo and "offline after" in demo
    assert "<task>-<model>-<size>px-<DATASET>" in text or "<task>-<model>-<size>px-<dataset>" in text
