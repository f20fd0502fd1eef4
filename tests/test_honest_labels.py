"""Depth labels say which teacher made them: "auto" never falls back to the synthetic geometric teacher unasked (a CPU
runtime stops in one line), and the notebooks, the demo report and the README say plainly that geometric labels are a
ground-plane guess, read from what the dataset's manifest recorded."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from eva_helpers.errors import EvaError
from eva_helpers.paths import mount_drive

ROOT = Path(__file__).resolve().parents[1]
DA_INFO = {"name": "depth-anything-v2-small", "source": "depth-anything/Depth-Anything-V2-Small-hf", "input_size": 518}


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    return mount_drive(tmp_path / "home")


@pytest.fixture
def cuda(monkeypatch):
    """Set whether torch sees a GPU, as a Colab CPU or GPU runtime would."""
    import torch

    def set_gpu(present: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: present)

    return set_gpu


def _relabel(src: Path, dst: Path, teacher: dict) -> Path:
    """A copy of a dataset whose manifest says another teacher made its labels."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["teacher"], m["params"]["teacher"] = teacher, teacher["name"]
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_auto_on_a_cpu_runtime_stops_instead_of_labelling_with_the_geometric_teacher(paths, cuda, capsys):
    from eva_helpers.colab.notebook import build_plan

    cuda(False)
    with pytest.raises(EvaError) as e:
        build_plan(paths, False, teacher="auto")
    msg = str(e.value)
    assert "\n" not in msg and "GPU" in msg and 'TEACHER = "geometric"' in msg
    assert not (paths.data / "my-dataset").exists()  # nothing claimed
    assert build_plan(paths, False, teacher="geometric").teacher == "geometric"  # on purpose: allowed
    assert build_plan(paths, True, teacher="auto").teacher == "geometric"  # SMOKE labels with it, as it says
    cuda(True)
    assert build_plan(paths, False, teacher="auto").teacher == "depth-anything-v2-small"


def test_auto_keeps_a_recorded_model_teacher_and_never_continues_geometric_labels_unasked(tmp_path, cuda, capsys):
    from eva_helpers.colab.notebook import resolve_teacher

    started = tmp_path / "ds"
    started.mkdir()
    (started / "manifest.json").write_text(json.dumps({"params": {"teacher": "depth-anything-v2-small"}}))
    cuda(False)
    assert resolve_teacher("auto", started) == "depth-anything-v2-small"  # a reconnect to a CPU runtime keeps it
    assert "Change runtime type > GPU" in capsys.readouterr().out
    (started / "manifest.json").write_text(json.dumps({"params": {"teacher": "geometric"}}))
    cuda(True)  # a build started on a CPU runtime with geometric labels is not silently continued on a GPU
    with pytest.raises(EvaError, match=r"synthetic ground-plane labels\): set TEACHER = \"geometric\" to finish it"):
        resolve_teacher("auto", started)
    assert resolve_teacher("geometric", started) == "geometric"


def test_the_teachers_resolution_without_a_notebook():
    from eva_helpers.compositing.teachers import resolve_teacher

    with pytest.raises(EvaError, match="no GPU"):
        resolve_teacher("auto", gpu=False)
    assert resolve_teacher("auto", gpu=False, allow_synthetic=True) == "geometric"
    assert resolve_teacher("auto", "geometric", gpu=True, allow_synthetic=True) == "geometric"
    assert resolve_teacher("auto", gpu=True) == "depth-anything-v2-small"
    assert resolve_teacher("midas-small", gpu=False) == "midas-small"


def test_samples_shown_name_the_teacher_from_the_manifest(sample_dataset, tmp_path, capsys):
    from eva_helpers.colab.notebook import show_samples_of

    fig = show_samples_of(sample_dataset, 2)
    out = capsys.readouterr().out
    assert "geometric teacher" in out and "SYNTHETIC" in out and "ground-plane guess" in out
    assert "SYNTHETIC" in fig._suptitle.get_text()
    da = _relabel(sample_dataset, tmp_path / "da", DA_INFO)
    fig = show_samples_of(da, 2)
    out = capsys.readouterr().out
    assert "Depth Anything V2 Small" in out and "SYNTHETIC" not in out and "geometric" not in out
    assert "Depth Anything" in fig._suptitle.get_text()


def _report(data: Path, out: Path) -> str:
    from eva_helpers.demo import DemoConfig, write_report
    from eva_helpers.data.stats import compute_stats

    stats = compute_stats(data, limit=16, progress=False, write=False)
    return write_report(DemoConfig(out=str(out)), data, stats, {}).read_text()


@pytest.mark.slow
def test_the_demo_report_says_which_teacher_made_the_labels(sample_dataset, tmp_path):
    geo = _report(sample_dataset, tmp_path / "geo")
    assert "geometric teacher: SYNTHETIC labels (a ground-plane guess" in geo
    assert "not how well it measures real depth" in geo
    da = _report(_relabel(sample_dataset, tmp_path / "da", DA_INFO), tmp_path / "da-report")
    assert "Depth Anything V2 Small" in da and "geometric" not in da and "SYNTHETIC" not in da


def _sources(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells)


def test_notebooks_and_readme_say_geometric_labels_are_synthetic():
    nb01, nb02 = _sources("01_build_dataset"), _sources("02_explore_dataset")
    assert "and the geometric teacher on a CPU" not in nb01  # the old silent fallback, as the notebook described it
    for text in (nb01, nb02):
        assert re.search(r"synthetic[^.]*ground-plane guess", text, re.I | re.S)
    assert 'set `TEACHER = "geometric"` on purpose' in nb01 and "names the teacher" in nb01
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"geometric teacher's labels[^.]*synthetic", readme, re.S)
    assert "never labelled again" in readme
