"""Where data, caches and runs live: Google Drive in Colab, a local folder elsewhere. Nothing happens at import."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from eva_helpers.errors import EvaError

DRIVE_MOUNT = Path("/content/drive")
ENV_HOME = "EVA_HOME"  # overrides where data/runs live (also in Colab)
ENV_CACHE = "EVA_CACHE"  # overrides the local cache for fetched shards
_NAME_MAX = 255  # bytes of one path component on ext4, NTFS, APFS and Drive
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def in_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


# ---- is Drive there? ----------------------------------------------------------------------------------------------
# After `drive.flush_and_unmount()` the folder /content/drive is an ordinary local folder: a write "to Drive" would
# land on the runtime's disk (lost with it) and a training cell would start again from epoch 0. `session.finish`
# records that it unmounted; the mount table is the other witness.
_unmounted_by_us = False


def _is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def mark_drive_unmounted(unmounted: bool = True) -> None:
    """Record that this session unmounted Drive (`finish`) or mounted it again (`mount_drive`)."""
    global _unmounted_by_us
    _unmounted_by_us = unmounted


def under_drive(path: str | os.PathLike) -> bool:
    """Whether `path` lies under the Drive mount point (only the path is looked at)."""
    mount = Path(os.path.abspath(DRIVE_MOUNT))
    p = Path(os.path.abspath(path))
    return p == mount or mount in p.parents


def drive_mounted() -> bool:
    return not _unmounted_by_us and _is_mount(DRIVE_MOUNT)


def require_drive_mounted(path: str | os.PathLike, what: str = "this cell") -> Path:
    """`path`, after checking that Drive is mounted when `path` is under the Drive mount point; else one EvaError.

    Every notebook step that writes under the Drive root (a build, a run folder, stats, the dataset list) calls this
    first, so nothing is written to a local folder that only looks like Drive."""
    if under_drive(path) and not drive_mounted():
        why = "finish() unmounted it" if _unmounted_by_us else "it is not mounted"
        raise EvaError(f"{path}: Google Drive is not mounted ({why}), so {what} would write to the runtime's local "
                       "disk instead; run the environment cell (paths = start()) again, then this cell")
    return Path(path)


@dataclass(frozen=True)
class Paths:
    """The folders a notebook works with. `root` may be on Drive; `cache` is always fast local disk."""

    root: Path
    data: Path
    runs: Path
    cache: Path
    on_drive: bool

    def __str__(self) -> str:
        where = "Google Drive" if self.on_drive else "local disk"
        return f"root={self.root} ({where})  data={self.data}  runs={self.runs}  cache={self.cache}"


def default_cache() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if Path("/content").is_dir():
        return Path("/content/eva_cache")  # Colab's local disk: fast, unlike small-file I/O through Drive
    return Path.home() / ".cache" / "eva-maskdepth"


def mount_drive(root: str | os.PathLike | None = None, mount: bool = True) -> Paths:
    """Mount Google Drive in Colab (or use a local folder elsewhere) and create data/, runs/ and the cache.

    Priority: explicit `root`, then $EVA_HOME, then Drive in Colab, then ./eva_home locally.
    """
    if root is None and os.environ.get(ENV_HOME):
        root = os.environ[ENV_HOME]
    colab = mount and in_colab()
    if root is None:
        root = DRIVE_MOUNT / "MyDrive" / "eva-maskdepth" if colab else Path.cwd() / "eva_home"
    root = Path(root).expanduser().resolve()
    on_drive = under_drive(root)
    if on_drive and colab:
        from google.colab import drive  # type: ignore

        drive.mount(str(DRIVE_MOUNT))  # asks once per session; mounting again after finish() is fine
        mark_drive_unmounted(False)
    if on_drive:
        require_drive_mounted(root, "creating the folders")
    paths = Paths(root=root, data=root / "data", runs=root / "runs", cache=default_cache(), on_drive=on_drive)
    for p in (paths.data, paths.runs, paths.cache):
        p.mkdir(parents=True, exist_ok=True)
    return paths


def sample_assets() -> Path:
    """The embedded sample (12 real backgrounds, 16 real cut-outs with alpha), shipped inside the package."""
    return Path(__file__).parent / "sample_assets"


# ---- names that become paths ------------------------------------------------------------------------------------
def path_problem(rel: str, *, one_part: bool = False) -> str | None:
    """Why `rel` cannot name something inside a folder ("/"-separated plain components; one when `one_part`), or None.

    Refused: empty, absolute, a drive letter or any ':' (C:x, alternate data streams), a backslash (a separator on
    Windows), '.' / '..' or empty components, control characters, a component over 255 bytes.
    """
    if not isinstance(rel, str) or not rel:
        return "is empty" if rel == "" else f"is not a string ({type(rel).__name__})"
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        return "is an absolute path"
    if ":" in rel:
        return "has a drive letter or ':'"
    if "\\" in rel:
        return "has a backslash (a path separator on Windows)"
    if _CONTROL.search(rel):
        return "has a control character"
    parts = rel.split("/")
    if ".." in parts:
        return "has a '..' component (it would escape its folder)"
    if one_part and len(parts) > 1:
        return "has a path separator '/'"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' component"
    if any(len(p.encode("utf-8", "surrogateescape")) > _NAME_MAX for p in parts):
        return f"has a component longer than {_NAME_MAX} bytes"
    return None


def safe_name(name: str, *, what: str = "name", source: str | os.PathLike = "") -> str:
    """`name` if it is one plain folder or file name (see `path_problem`), else an EvaError naming `source` and it.

    Every name that becomes a path (dataset names, run names, file names) goes through here or `safe_relpath`.
    """
    problem = path_problem(name, one_part=True)
    if problem:
        where = f"{source}: " if str(source) else ""
        raise EvaError(f"{where}{what} {_short(name)} {problem}; use a plain name (letters, digits, '-', '_', '.')")
    return name


def safe_relpath(rel: str, *, what: str = "file name", source: str | os.PathLike = "", error: type = EvaError) -> str:
    """`rel` if it is a relative path of plain components inside its folder ("shards/shard-00000.zip"), else `error`."""
    problem = path_problem(rel)
    if problem:
        where = f"{source}: " if str(source) else ""
        raise error(f"{where}{what} {_short(rel)} {problem}; it must be a relative path inside the folder")
    return rel


def _short(name: object) -> str:
    r = repr(name)
    return r if len(r) <= 80 else r[:60] + "..." + r[-12:]


def same_path(a: object, b: object) -> bool:
    """Two given paths name one file or folder (`src`, `./src`, `~/x/src` and its absolute path); False when either is
    empty or not a path."""
    if not (isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)) and str(a) and str(b)):
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
