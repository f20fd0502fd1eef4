"""Fetch a dataset listed in `data_manifest.json` into the local cache, every file verified (transport.py).

The folder it fills holds manifest.json, backgrounds.zip and shards/, recorded as verified in the dataset's one
verification record, so the first `open_dataset` on it stats the files instead of hashing them again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eva_helpers.atomic import check_output_folder
from eva_helpers.data import formats
from eva_helpers.data.verify import VerifyRecord
from eva_helpers.fetching.catalogue import FetchError, files_of, load_data_manifest
from eva_helpers.fetching.transport import fetch_file
from eva_helpers.paths import default_cache, safe_name, safe_relpath


def fetch_dataset(name_or_entry: str | dict[str, Any], *, data_manifest: str | os.PathLike | dict | None = None,
                  cache: str | os.PathLike | None = None, retries: int = 4, progress: bool = True,
                  backoff: float = 1.0) -> Path:
    """Fetch a dataset (by name from data_manifest.json, or an entry dict) into `cache/<name>`; returns that folder.

    The folder holds manifest.json, backgrounds.zip and shards/: ready for `ShardDataset`.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache if cache is not None else default_cache())
    check_output_folder(cache_dir, "cache")
    base = None
    if isinstance(name_or_entry, str):
        doc = load_data_manifest(data_manifest)
        datasets = doc.get("datasets", {})
        source = doc.get("_path", "data manifest")
        if name_or_entry not in datasets:
            raise FetchError(f"unknown dataset {name_or_entry!r}; {source} lists: {sorted(datasets)}")
        name, entry, base = name_or_entry, datasets[name_or_entry], doc.get("_base")
        if not isinstance(entry, dict):
            raise FetchError(f"{source}: dataset {name!r} is not an entry (a JSON object expected); fix the file")
    else:
        entry = name_or_entry
        name = entry.get("name") or "dataset-" + str(entry["dataset_manifest"]["sha256"])[:12]
        source = "data manifest entry"
    safe_name(name, what="dataset name", source=source)  # it becomes <cache>/<name>: nothing is written before this
    files = files_of(entry, f"{source}: dataset {name!r}")
    if not entry.get("shards"):
        raise FetchError(f"dataset {name!r} lists no shards in the data manifest (placeholder entry?)")
    dest = cache_dir / name
    dest.mkdir(parents=True, exist_ok=True)
    record = VerifyRecord(dest)
    try:
        for spec in tqdm(files, desc=f"fetch {name}", unit="file", disable=not progress):
            fetch_file(spec, dest / spec["file"], base=entry.get("base", base), retries=retries,
                       backoff=backoff, progress=progress, record=record)
    finally:
        record.save()
    listed = [safe_relpath(s.get("file"), what="shard file", source=dest / formats.MANIFEST)
              for s in formats.read_manifest(dest).get("shards", [])]
    missing = [f for f in listed if not (dest / f).is_file()]
    if missing:
        raise FetchError(f"dataset {name!r}: data manifest entry lacks {len(missing)} shard(s) of its manifest.json "
                         f"(first {missing[0]}); regenerate the entry with manifest_entry_for()")
    return dest


