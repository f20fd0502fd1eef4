"""Find a dataset by path or name and make it readable fast: local folders as they are, Drive folders copied to the
local cache (verified), names from `data_manifest.json` fetched."""
from __future__ import annotations

from pathlib import Path

from .formats import MANIFEST
from .paths import DRIVE_MOUNT, Paths, path_problem


def resolve_dataset(name_or_path: str | Path, paths: Paths | None = None, *, cache: str | Path | None = None,
                    copy_to_cache: bool | None = None) -> Path:
    """A dataset folder ready for ShardDataset.

    Looks for, in order: a folder with a manifest.json, `<paths.data>/<name>` (what notebook 01 built; for a plain name
    only, never `../x`), a name in data_manifest.json. A folder on Google Drive is copied to the local cache first
    (`copy_to_cache=None` means: only when on Drive), because reading zips through the Drive mount is slow.
    """
    text = str(name_or_path)
    candidates = [Path(text).expanduser()] + ([paths.data / text] if paths is not None and in_data(text) else [])
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            on_drive = str(folder.resolve()).startswith(str(DRIVE_MOUNT))
            if copy_to_cache or (copy_to_cache is None and on_drive):
                from .fetch import fetch_dataset, manifest_entry_for

                return fetch_dataset(manifest_entry_for(folder, source_kind="drive_path"), cache=cache)
            return folder
    from .fetch import fetch_dataset

    return fetch_dataset(text, cache=cache)


def in_data(name: str) -> bool:
    """Whether `name` may be looked up as a dataset under `paths.data`: one plain folder name (paths.safe_name)."""
    return path_problem(name, one_part=True) is None
