"""The three forms the package reaches users in (GitHub's archive zip, a wheel, an sdist), each installed into a fresh
virtual environment offline, can fetch the shipped sample. pip unpacks a zip's symlink as a text file holding the
link's target, so everything the package reads must be a real file in the tree."""
from __future__ import annotations

import json
import os
import shutil
import site
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = "eva_helpers/data_manifest.json"


def _tree_files() -> list[str]:
    """The tree as it would be committed (tracked plus new, non-ignored files that exist); skips outside a checkout."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, check=True)
    names = sorted({n for n in r.stdout.decode().split("\0") if n})
    return [n for n in names if os.path.lexists(ROOT / n)]


def github_zip(dest: Path, ref: str = "main") -> Path:
    """The tree zipped as GitHub's archive/<ref>.zip is: one top folder, symlinks stored as symlink entries."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for name in _tree_files():
            src = ROOT / name
            info = zipfile.ZipInfo(f"eva-maskdepth-{ref}/{name}")
            info.create_system = 3  # unix, so the mode bits below are read
            if src.is_symlink():
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                z.writestr(info, os.readlink(src))
            else:
                info.external_attr = (stat.S_IFREG | (src.stat().st_mode & 0o777)) << 16
                z.writestr(info, src.read_bytes())
    return dest


def checkout_copy(dest: Path) -> Path:
    """The tree copied as a clone has it (symlinks kept as symlinks): what a wheel or sdist is built from."""
    for name in _tree_files():
        src, out = ROOT / name, dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "EVA_"))}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}


def _run(cmd: list, cwd: Path) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def fresh_venv(where: Path) -> Path:
    """A new venv that sees this interpreter's libraries (torch, numpy, setuptools, pip: nothing is downloaded) but
    not this checkout: the .pth lists the site folders as plain paths, so their own .pth files (an editable install's
    finder) are not run. Returns the venv's python."""
    _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    py = where / "bin" / "python"
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where).strip()
    (Path(purelib) / "outer-libraries.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return py


def test_the_package_holds_real_files_only():
    """A symlink inside eva_helpers/ reaches zip installs as a few bytes of path: every file there must be real."""
    files = _tree_files()
    links = [n for n in files if n.startswith("eva_helpers/") and (ROOT / n).is_symlink()]
    assert not links, f"symlinks in the package (a zip install gets their target path as text): {links}"
    doc = json.loads((ROOT / PACKAGED).read_text())
    assert "sample" in doc["datasets"]
    assert (ROOT / "data_manifest.json").read_bytes() == (ROOT / PACKAGED).read_bytes()  # the top level is the same list


@pytest.mark.slow  # three builds and installs into fresh venvs (~1 min)
@pytest.mark.parametrize("form", ["archive-zip", "wheel", "sdist"])
def test_each_install_form_fetches_the_sample(form, tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    if form == "archive-zip":
        target = github_zip(dist / "main.zip")
    else:
        tree = checkout_copy(tmp_path / "clone")
        if form == "wheel":
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, tree],
                 cwd=tmp_path)
        else:
            _run([sys.executable, "setup.py", "-q", "sdist", "-d", dist], cwd=tree)
        (target,) = dist.iterdir()
    py = fresh_venv(tmp_path / "venv")
    # --ignore-installed: the outer libraries may hold this project too (installed, not editable); never touch it
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed", target],
         cwd=tmp_path)
    origin = _run([py, "-c", "import eva_helpers; print(eva_helpers.__file__)"], cwd=tmp_path).strip()
    assert origin.startswith(str(tmp_path / "venv")), origin  # the installed copy, not this checkout
    out = _run([tmp_path / "venv" / "bin" / "eva", "fetch", "sample", "--cache", tmp_path / "cache"], cwd=tmp_path)
    fetched = Path(out.strip().splitlines()[-1])
    assert fetched == tmp_path / "cache" / "sample" and (fetched / "manifest.json").is_file()
    assert len(list((fetched / "shards").glob("*.zip"))) == 2
