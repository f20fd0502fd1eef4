"""Find a dataset by path or name and make it readable fast: local folders as they are, Drive folders copied to the
local cache (verified) under their own name, names from the shipped `data_manifest.json` or the user's list on Drive
fetched.

The cache copy of a Drive folder keeps the folder's name (the notebooks' `DATASET`), so run folders named after the
dataset stay the same when it is rebuilt; a run then refuses the changed content (notebook_train) instead of
starting afresh in a new folder. The user's own entries live in `<root>/data_manifest.json` on Drive, beside the shipped
list: a reconnect reinstalls the package and would wipe a list kept inside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from eva_helpers.data.formats import MANIFEST
from eva_helpers.errors import EvaError
from eva_helpers.estimate import estimate_copy
from eva_helpers.fetching.catalogue import load_data_manifest, manifest_entry_for, save_entry
from eva_helpers.fetching.fetch import fetch_dataset
from eva_helpers.paths import Paths, default_cache, path_problem, require_drive_mounted, safe_name, under_drive

USER_LIST = "data_manifest.json"  # in the root folder (Drive): the user's datasets, read beside the shipped list


def resolve_dataset(name_or_path: str | Path, paths: Paths | None = None, *, cache: str | Path | None = None,
                    copy_to_cache: bool | None = None) -> Path:
    """A dataset folder ready for ShardDataset.

    Looks for, in order: a folder with a manifest.json, `<paths.data>/<name>` (what notebook 01 built; for a plain name
    only, never `../x`), a name in the user's list on Drive, a name in the shipped data_manifest.json. A folder on
    Google Drive is copied to `<cache>/<its name>` first (`copy_to_cache=None` means: only when on Drive), because
    reading zips through the Drive mount is slow.
    """
    text = str(name_or_path)
    candidates = [Path(text).expanduser()] + ([paths.data / text] if paths is not None and in_data(text) else [])
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            on_drive = under_drive(folder.resolve())
            if copy_to_cache or (copy_to_cache is None and on_drive):

                require_drive_mounted(folder, "the copy to the local cache")
                entry = {**manifest_entry_for(folder, source_kind="drive_path"), "name": folder.resolve().name}
                _print_copy_estimate(entry, Path(cache) if cache is not None else None)
                return fetch_dataset(entry, cache=cache)
            return folder

    user = user_list(paths)
    if user is not None and text in _datasets(user):
        return fetch_dataset(text, data_manifest=user, cache=cache)
    return fetch_dataset(text, cache=cache)


def _print_copy_estimate(entry: dict[str, Any], cache: Path | None) -> None:
    dest = (cache or default_cache()) / entry["name"]
    specs = [entry["dataset_manifest"], entry["backgrounds"], *entry["shards"]]
    todo = [s for s in specs if not ((dest / s["file"]).is_file() and (dest / s["file"]).stat().st_size == s["bytes"])]
    if todo:
        estimate_copy(sum(s["bytes"] for s in todo), len(todo))


def in_data(name: str) -> bool:
    """Whether `name` may be looked up as a dataset under `paths.data`: one plain folder name (paths.safe_name)."""
    return path_problem(name, one_part=True) is None


# ---- the user's own list of datasets (on Drive) ------------------------------------------------------------------
def user_list(paths: Paths | None) -> Path | None:
    """`<root>/data_manifest.json` when it exists."""
    if paths is None:
        return None
    p = Path(paths.root) / USER_LIST
    return p if p.is_file() else None


def _datasets(path: str | Path | None) -> dict[str, Any]:
    return load_data_manifest(path).get("datasets", {})


def known_dataset(name: str, paths: Paths | None) -> bool:
    """Whether `name` is in the shipped list or the user's list."""
    return name in _datasets(None) or (user_list(paths) is not None and name in _datasets(user_list(paths)))


def save_dataset_entry(name: str, entry: dict[str, Any], paths: Paths) -> Path:
    """Add or replace `name` in the user's list on Drive (`<root>/data_manifest.json`); returns the list's path.

    A name of the shipped list is refused: the user's entry would hide it (e.g. the sample).
    """
    safe_name(name, what="dataset name")
    if name in _datasets(None):
        raise EvaError(f"{name!r} is a dataset the package ships; give your entry another name")
    path = require_drive_mounted(Path(paths.root) / USER_LIST, "saving the dataset list")
    save_entry(name, entry, path)
    print(f"{name!r} saved in {path} (notebooks 02-05 find it with DATASET = {name!r})")
    return path
