"""The notebooks' install step, standard library only: it runs *before* eva_helpers exists on the machine.

tools/make_notebooks.py copies this file verbatim into every install cell (`exec`), and the tests import it directly.
Order: already importable -> nothing to do; pip from the repository pinned to a ref (a tag or commit, so a reconnect
installs the same code and a half-built dataset still resumes); then a copy on Drive (a wheel, a zip of the repository,
or the repository folder); then a plain-words message with two copy-pasteable ways out. pip runs with a constraints
file pinning the installed torch, torchvision, numpy, ipython and ipykernel, so it can never change them (it fails
instead, and the next source is tried). When pip changed a package this kernel has already imported, it says a
restart is needed.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROTECTED = ("torch", "torchvision", "numpy", "ipython", "ipykernel")
DIST = "eva-maskdepth"
MODULE = "eva_helpers"
DRIVE_COPY = "/content/drive/MyDrive/eva-maskdepth/install"


def _in_colab() -> bool:
    try:  # find_spec("google.colab") raises when there is no "google" package at all
        return importlib.util.find_spec("google.colab") is not None
    except ImportError:
        return False


def installed(module: str = MODULE) -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec(module) is not None


def constraints_text(packages=PROTECTED) -> str:
    """`name==version` for each protected package that is installed (pip may then never up- or downgrade it)."""
    lines = []
    for p in packages:
        try:
            lines.append(f"{p}=={md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return "\n".join(lines) + "\n"


def git_target(repo_url: str, ref: str, dist: str = DIST) -> str:
    """pip's address for the repository at `ref` (a tag, branch or commit); no ref = the default branch."""
    url = repo_url if repo_url.startswith("git+") else "git+" + repo_url
    return f"{dist} @ {url}@{ref}" if ref else f"{dist} @ {url}"


def drive_candidates(folder: str | os.PathLike) -> list[str]:
    """Installable copies in a Drive folder, best first: wheels (newest name first), zips, repository folders."""
    d = Path(folder)
    if not d.is_dir():
        return []
    wheels = sorted((str(p) for p in d.glob("*.whl")), reverse=True)
    zips = sorted((str(p) for p in d.glob("*.zip")), reverse=True)
    dirs = [str(p) for p in [d, *sorted(d.iterdir())] if p.is_dir() and
            ((p / "setup.py").is_file() or (p / "pyproject.toml").is_file())]
    return wheels + zips + dirs


def pip_install(target: str, constraints: str, python: str = sys.executable, extra: list[str] | None = None,
                log=print) -> bool:
    """`pip install target` under the constraints; True on success. pip's last error line is shown on failure."""
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints,
           *(extra or []), target]
    log(f"installing {target} ...")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()]
        log(f"  failed: {err[-1] if err else 'pip exit code ' + str(r.returncode)}")
    return r.returncode == 0


def _versions() -> dict[str, str]:
    return {(d.metadata["Name"] or "").lower(): d.version for d in md.distributions()}


def _imported_dists(changed: set[str]) -> list[str]:
    """Changed distributions whose modules this process has already imported (those need a restart)."""
    mapping = md.packages_distributions()
    loaded = {m.split(".")[0] for m in list(sys.modules)}
    return sorted({d.lower() for m in loaded for d in mapping.get(m, []) if d.lower() in changed})


def help_message(repo_url: str, ref: str, drive_copy: str, dist: str = DIST) -> str:
    return f"""
Could not install eva_helpers. Two ways forward:

  1. Put a copy on Google Drive and run this cell again: download the repository as a zip
     ({repo_url.removesuffix('.git')}/archive/{ref or 'main'}.zip) or build a wheel (`pip wheel . --no-deps`) and place it in
     {drive_copy}

  2. Install it yourself from a new cell, then run all cells again:
     !pip install "{git_target(repo_url, ref, dist)}"
     (for a private repository, put a token in the address: https://<token>@github.com/...)
"""


def ensure_installed(repo_url: str, ref: str = "", drive_copy: str = DRIVE_COPY, *, mount=True,
                     python: str = sys.executable, extra: list[str] | None = None, module: str = MODULE,
                     dist: str = DIST, log=print) -> bool:
    """Install eva_helpers if missing (pinned repository, then a Drive copy); False after printing what to do.

    mount: True mounts Drive in Colab before looking there (a callable is called instead). extra: more pip arguments (tests: --target ...).
    """
    if installed(module):
        return True
    before = _versions()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(constraints_text())
    try:
        ok = pip_install(git_target(repo_url, ref, dist), f.name, python, extra, log)
        if not ok:
            if mount is True and _in_colab():
                from google.colab import drive  # type: ignore  # the copy is on Drive: mount it (asks once)

                drive.mount("/content/drive")
            elif callable(mount):
                mount()
            cands = drive_candidates(drive_copy)
            if not cands:
                log(f"no copy of eva_helpers in {drive_copy}")
            for cand in cands:
                if pip_install(cand, f.name, python, extra, log):
                    ok = True
                    break
    finally:
        os.unlink(f.name)
    if not ok or not installed(module):
        log(help_message(repo_url, ref, drive_copy, dist))
        return False
    after = _versions()
    changed = {k for k, v in after.items() if before.get(k) not in (None, v)}
    stale = _imported_dists(changed)
    if stale:
        log(f"pip changed {', '.join(stale)}, already imported here: Runtime > Restart session, then run all cells "
            "again (the install is kept)")
    else:
        log("eva_helpers installed; no restart needed")
    return True
