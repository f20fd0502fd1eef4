"""Where data, caches and runs live: Google Drive in Colab, a local folder elsewhere. Nothing happens at import."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")
DRIVE_ROOT = DRIVE_MOUNT / "MyDrive" / "eva-maskdepth"
ENV_HOME = "EVA_HOME"  # overrides where data/runs live (also in Colab)
ENV_CACHE = "EVA_CACHE"  # overrides the local cache for fetched shards


def in_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


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
    on_drive = False
    if root is None and os.environ.get(ENV_HOME):
        root = os.environ[ENV_HOME]
    if root is None:
        if mount and in_colab():
            from google.colab import drive  # type: ignore

            drive.mount(str(DRIVE_MOUNT))
            root, on_drive = DRIVE_ROOT, True
        else:
            root = Path.cwd() / "eva_home"
    root = Path(root).expanduser().resolve()
    on_drive = on_drive or str(root).startswith(str(DRIVE_MOUNT))
    paths = Paths(root=root, data=root / "data", runs=root / "runs", cache=default_cache(), on_drive=on_drive)
    for p in (paths.data, paths.runs, paths.cache):
        p.mkdir(parents=True, exist_ok=True)
    return paths


def sample_assets() -> Path:
    """The embedded sample (12 real backgrounds, 16 real cut-outs with alpha), shipped inside the package."""
    return Path(__file__).parent / "sample_assets"
