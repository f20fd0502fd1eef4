"""The install cell's logic (eva_helpers/colab/install.py), headless and offline: a pinned install from a local git
repository fails (the ref does not exist), the copy in the Drive folder is installed instead; with no copy, the
"nothing worked" message gives two copy-pasteable ways forward. pip never gets the chance to change torch or numpy."""
from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest

from eva_helpers.colab import install as ci

SETUP = "from setuptools import setup\nsetup(name='evafake', version='0.0.1', py_modules=['evafake'])\n"


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def repo(tmp_path) -> Path:
    """A local git repository of a one-module package `evafake` (tag v1): a repository address with no network."""
    r = tmp_path / "repo"
    r.mkdir()
    (r / "setup.py").write_text(SETUP)
    (r / "evafake.py").write_text("VERSION = 'from-git'\n")
    _git("init", "-q", cwd=r)
    _git("add", ".", cwd=r)
    _git("commit", "-q", "-m", "v1", cwd=r)
    _git("tag", "v1", cwd=r)
    return r


def _kw(tmp_path):
    """pip into a private folder, offline, without touching this virtualenv."""
    return dict(module="evafake", dist="evafake", mount=False,
                extra=["--target", str(tmp_path / "site"), "--no-deps", "--no-index", "--no-build-isolation"])


@pytest.mark.slow  # two pip installs
def test_pinned_install_fails_then_drive_copy_is_used(tmp_path, repo, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    drive = tmp_path / "drive"
    copy = drive / "evafake-copy"
    copy.mkdir(parents=True)
    (copy / "setup.py").write_text(SETUP)
    (copy / "evafake.py").write_text("VERSION = 'from-drive'\n")
    (drive / "desktop.ini").write_text("junk")  # Drive folders collect junk: not a candidate
    calls, log = [], []
    real = subprocess.run
    monkeypatch.setattr(ci.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
    assert not ci.installed("evafake")
    ok = ci.ensure_installed(f"file://{repo}", "v9-no-such-tag", str(drive), log=log.append, **_kw(tmp_path))
    assert ok, "\n".join(log)
    assert len(calls) == 2
    assert calls[0][-1] == f"evafake @ git+file://{repo}@v9-no-such-tag"  # the pinned ref was tried first
    assert calls[1][-1] == str(copy)  # then the copy on Drive
    for cmd in calls:
        assert "-U" not in cmd and "--upgrade" not in cmd and "-c" in cmd  # constraints pin torch, numpy, ...
    assert any("failed" in line for line in log)
    import evafake

    assert evafake.VERSION == "from-drive"
    sys.modules.pop("evafake", None)


@pytest.mark.slow  # a pip install from a git repository
def test_pinned_install_from_local_repository_succeeds(tmp_path, repo, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ok = ci.ensure_installed(f"file://{repo}", "v1", str(tmp_path / "no-drive"), log=lambda s: None, **_kw(tmp_path))
    assert ok
    import evafake

    assert evafake.VERSION == "from-git"
    sys.modules.pop("evafake", None)


def test_nothing_worked_gives_two_ways_forward(tmp_path, repo, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    log = []
    ok = ci.ensure_installed(f"file://{repo}", "v9-no-such-tag", str(tmp_path / "empty-drive"), log=log.append,
                             **_kw(tmp_path))
    text = "\n".join(log)
    assert not ok and not ci.installed("evafake")
    assert "Two ways forward" in text and "1." in text and "2." in text
    assert str(tmp_path / "empty-drive") in text  # where to put a copy
    assert f'!pip install "evafake @ git+file://{repo}@v9-no-such-tag"' in text  # copy-pasteable
    assert "Traceback" not in text


def test_constraints_pin_the_installed_torch_and_numpy():
    text = ci.constraints_text()
    assert f"torch=={md.version('torch')}" in text and f"numpy=={md.version('numpy')}" in text


def test_drive_candidates_order(tmp_path):
    (tmp_path / "eva_maskdepth-0.1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "eva-maskdepth-main.zip").write_bytes(b"")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    (tmp_path / "photos").mkdir()
    names = [Path(p).name for p in ci.drive_candidates(tmp_path)]
    assert names == ["eva_maskdepth-0.1.0-py3-none-any.whl", "eva-maskdepth-main.zip", "repo"]
    assert ci.drive_candidates(tmp_path / "missing") == []


def test_already_installed_does_nothing(monkeypatch):
    monkeypatch.setattr(ci.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert ci.ensure_installed("https://example.invalid/x", "v1", "/nonexistent", log=lambda s: None)


def test_the_notebook_install_cell_itself(monkeypatch, capsys):
    """The cell as committed: package missing -> pinned pip address tried -> no Drive copy -> SystemExit with help."""
    import importlib.util
    import json

    root = Path(__file__).resolve().parents[1]
    nb = json.loads((root / "notebooks" / "03_train_mask.ipynb").read_text())
    cell = "".join([c for c in nb["cells"] if c["cell_type"] == "code"][1]["source"])
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "eva_helpers" else real_find(name, *a))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(
        cmd, 1, "", "fatal: could not read Username for 'https://github.com'"))
    with pytest.raises(SystemExit, match="not installed"):
        exec(compile(cell, "install-cell", "exec"), {})
    out = capsys.readouterr().out
    ref = next(line.split('"')[1] for line in cell.splitlines() if line.startswith("REF = "))
    assert calls and calls[0][-1].endswith(f"@{ref}") and "git+https://github.com/" in calls[0][-1]
    assert "could not read Username" in out and "Two ways forward" in out and "!pip install" in out
