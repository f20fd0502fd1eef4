"""The notebooks' install step, standard library only: it runs *before* eva_helpers exists on the machine.

tools/make_notebooks.py copies this file verbatim into every install cell (`exec`), and the tests import it directly.
Order: already importable -> nothing to do; pip from the repository at REF (a branch, tag or commit that exists);
for a private repository, the same with a token kept in Colab's Secrets (GITHUB_TOKEN), never in the notebook; then the
newest copy on Drive (a wheel, a zip of the repository, or the repository folder; newest by version order, so 0.10
comes after 0.9), saying when its version is not REF; then a plain-words message with two copy-pasteable ways out.
pip runs with a constraints file pinning the installed torch, torchvision, numpy, ipython and ipykernel, so it can
never change them (it fails instead, and the next source is tried). When pip changed a package this kernel has already
imported, the cell stops (SystemExit): "Run all" must not go on with the old modules in memory.
Before that check, the optional extras the cell asks for (OPTIONAL: pillow-heif, for HEIC photos, the iPhone default)
are added, best effort, in their own pip call with Pillow pinned as well: the newest pillow-heif wants a newer Pillow
than Colab's, and an upgraded Pillow would need a restart, so pip picks a pillow-heif that fits; if none does, one line
says HEIC photos will be refused and the install still succeeds.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROTECTED = ("torch", "torchvision", "numpy", "ipython", "ipykernel")
DIST = "eva-maskdepth"
MODULE = "eva_helpers"
DRIVE_COPY = "/content/drive/MyDrive/eva-maskdepth/install"
OPTIONAL = {"pillow_heif": "pillow-heif"}  # module -> pip requirement: the "heic" extra of setup.py
TOKEN_SECRET = "GITHUB_TOKEN"  # the name of the Colab Secret (key icon on the left) for a private repository


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


def version_key(name: str) -> tuple:
    """Sort key of a file or folder name by the version in it: 0.10.0 > 0.9.2 > 0.9 (no version sorts first)."""
    m = re.search(r"(?<![0-9A-Za-z])v?(\d+(?:\.\d+)*)", Path(name).name.replace("_", "-").split("-", 1)[-1])
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def drive_candidates(folder: str | os.PathLike) -> list[str]:
    """Installable copies in a Drive folder, best first: wheels, then zips (each newest version first), then
    repository folders."""
    d = Path(folder)
    if not d.is_dir():
        return []
    newest = lambda paths: sorted((str(p) for p in paths), key=lambda p: (version_key(p), p), reverse=True)  # noqa: E731
    dirs = [str(p) for p in [d, *sorted(d.iterdir())] if p.is_dir() and
            ((p / "setup.py").is_file() or (p / "pyproject.toml").is_file())]
    return newest(d.glob("*.whl")) + newest(d.glob("*.zip")) + dirs


def pip_install(target: str, constraints: str, python: str = sys.executable, extra: list[str] | None = None,
                log=print, secret: str = "") -> bool:
    """`pip install target` under the constraints; True on success. pip's last error line is shown on failure.
    `secret` (a token inside `target`) never appears in what is printed."""
    hide = (lambda t: t.replace(secret, "***")) if secret else (lambda t: t)  # noqa: E731
    cmd = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints,
           *(extra or []), target]
    log(f"installing {hide(target)} ...")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()]
        log(f"  failed: {hide(err[-1]) if err else 'pip exit code ' + str(r.returncode)}")
    return r.returncode == 0


def install_optional(optional: dict[str, str], python: str = sys.executable, extra: list[str] | None = None,
                     log=print) -> list[str]:
    """pip install each missing optional module's requirement, with the protected packages and Pillow pinned; a failure
    is one line, never a failed install. Returns the requirements installed."""
    missing = [req for mod, req in optional.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(constraints_text(PROTECTED + ("pillow",)))
    try:
        failed = [req for req in missing if not pip_install(req, f.name, python, extra, log)]
    finally:
        os.unlink(f.name)
    if failed:
        log(f"{', '.join(failed)} not installed: HEIC photos (the iPhone default) will be refused; JPEG, PNG and WebP "
            "work (or export the photos as JPEG)")
    importlib.invalidate_caches()
    return [req for req in missing if req not in failed]


def _secret_token(name: str = TOKEN_SECRET) -> str:
    """The token saved in Colab's Secrets under `name` (with notebook access granted), or ""."""
    try:
        from google.colab import userdata  # type: ignore

        return userdata.get(name) or ""
    except Exception:  # not Colab, no such secret, or access not granted: the public address was all there is
        return ""


def _with_token(repo_url: str, token: str) -> str:
    return re.sub(r"^(git\+)?https://", lambda m: f"{m.group(1) or ''}https://x-access-token:{token}@", repo_url)


def _git_head(folder: str | os.PathLike) -> str:
    try:
        r = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def installed_source(dist: str = DIST, module: str = MODULE) -> dict[str, str]:
    """Where the installed code came from: {"commit": ..., "source": ...} as far as it is known (pip's direct_url.json
    of a git or folder install, else the git checkout the module is imported from); {} when nothing is known."""
    out: dict[str, str] = {}
    try:
        info = json.loads(md.distribution(dist).read_text("direct_url.json") or "{}")
    except (md.PackageNotFoundError, ValueError):
        info = {}
    url = re.sub(r"//[^/@]*@", "//", info.get("url", ""))  # never record a token
    vcs = info.get("vcs_info") or {}
    if url:
        out["source"] = url + (f"@{vcs['requested_revision']}" if vcs.get("requested_revision") else "")
    if vcs.get("commit_id"):
        out["commit"] = vcs["commit_id"]
        return out
    spec = importlib.util.find_spec(module)
    folder = Path(spec.origin).parent.parent if spec and spec.origin else None
    if folder is not None and (folder / ".git").exists():  # an editable install or a checkout on sys.path
        head = _git_head(folder)
        if head:
            out["commit"] = head
            out.setdefault("source", str(folder))
    return out


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
     For a private repository, never paste a token into the notebook (it is saved with it): add it in Colab's
     Secrets (the key icon on the left) as {TOKEN_SECRET}, allow this notebook access, and run this cell again; it
     reads the token with google.colab.userdata.get("{TOKEN_SECRET}").
"""


def _drive_copy_note(installed_from: str, ref: str, dist: str) -> str:
    """One line: which copy was installed, and whether its version is the one REF names."""
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        have = "unknown"
    asked = version_key("x-" + ref) if ref else ()
    if asked and re.fullmatch(r"v?\d+(\.\d+)*", ref) and version_key("x-" + have) != asked:
        return (f"installed {installed_from} (version {have}), which is not REF = {ref!r}: put the {ref} copy in the "
                "Drive folder to use that one")
    return (f"installed {installed_from} (version {have}) instead of REF = {ref or 'the default branch'!r} from the "
            "repository: this is the code of that copy, which may be older")


def ensure_installed(repo_url: str, ref: str = "", drive_copy: str = DRIVE_COPY, *, mount=True,
                     python: str = sys.executable, extra: list[str] | None = None, module: str = MODULE,
                     dist: str = DIST, log=print, optional: dict[str, str] | None = None) -> bool:
    """Install eva_helpers if missing (the repository at `ref`, then the newest Drive copy); False after printing what
    to do. Raises SystemExit when pip changed a package this process has already imported (a restart is needed).

    mount: True mounts Drive in Colab before looking there (a callable is called instead). extra: more pip arguments (tests: --target ...).
    optional: module -> requirement installed after the package when missing, best effort (the notebooks pass
    OPTIONAL).
    """
    if installed(module):
        return True
    before = _versions()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(constraints_text())
    note = ""
    try:
        ok = pip_install(git_target(repo_url, ref, dist), f.name, python, extra, log)
        token = "" if ok else _secret_token()
        if token:
            log(f"trying again with the token in Colab's Secrets ({TOKEN_SECRET})")
            ok = pip_install(git_target(_with_token(repo_url, token), ref, dist), f.name, python, extra, log,
                             secret=token)
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
                    ok, note = True, _drive_copy_note(cand, ref, dist)
                    break
    finally:
        os.unlink(f.name)
    if not ok or not installed(module):
        log(help_message(repo_url, ref, drive_copy, dist))
        return False
    if note:
        log(note)
    install_optional(optional or {}, python, extra, log)
    after = _versions()
    changed = {k for k, v in after.items() if before.get(k) not in (None, v)}
    stale = _imported_dists(changed)
    if stale:
        msg = (f"pip changed {', '.join(stale)}, already imported in this session: Runtime > Restart session, then run "
               "all cells again (the install is kept)")
        log(msg)
        raise SystemExit(msg)
    src = installed_source(dist, module)
    log(f"eva_helpers {after.get(dist.lower(), '?')} installed" + (f", commit {src['commit'][:12]}" if src.get("commit")
        else "") + "; no restart needed")
    return True
