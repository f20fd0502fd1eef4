"""The catalogue of datasets: `data_manifest.json`, where each built dataset can be fetched from, file by file.

An entry lists the dataset's manifest.json, backgrounds.zip and shards, each with its sha256, size and one source:
a path in the repository (`repo_path`), on Google Drive (`drive_path`), a Drive file id (`gdown_id`) or a `url`.
`manifest_entry_for` writes an entry for a built folder, `save_entry` adds it to a catalogue (the shipped one, or a
user's own on Drive: locate.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_write_text, json_text, sha256_file
from eva_helpers.data import formats
from eva_helpers.errors import EvaError
from eva_helpers.paths import safe_name, safe_relpath

DATA_MANIFEST_SCHEMA = "eva-data-manifest/1"


# `repo_path` sources are relative to this folder: the repository, or site-packages when installed.
REPO_ROOT = Path(__file__).resolve().parents[2]


# The shipped list is a real file inside the package, so every install form carries it (pip unpacks a zip's symlink
# as a text file of its target); the repository's top-level data_manifest.json is a link to it.
PACKAGED_DATA_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifest.json"


DEFAULT_DATA_MANIFEST = PACKAGED_DATA_MANIFEST


DRIVE_HOME = Path("/content/drive/MyDrive")


SOURCE_KINDS = ("repo_path", "drive_path", "gdown_id", "url")


class FetchError(EvaError):
    """A file could not be fetched; the message says what to do."""


def load_data_manifest(data_manifest: str | os.PathLike | dict | None = None) -> dict[str, Any]:
    """The shipped data_manifest.json (or a given path/dict); records the folder its repo paths start from as `_base`."""
    if isinstance(data_manifest, dict):
        return data_manifest
    path = DEFAULT_DATA_MANIFEST if data_manifest is None else Path(data_manifest)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FetchError(f"{path}: cannot read the data manifest ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets", {}), dict):
        raise FetchError(f"{path}: not a data manifest (a JSON object with a 'datasets' object expected); restore "
                         "the repository's data_manifest.json or fix the file")
    if doc.get("schema") != DATA_MANIFEST_SCHEMA:
        raise FetchError(f"{path}: schema {doc.get('schema')!r}, expected {DATA_MANIFEST_SCHEMA!r}")
    # repo paths of the default manifest are relative to the repo root (site-packages when installed)
    doc["_base"] = str(REPO_ROOT if data_manifest is None else path.parent)
    doc["_path"] = str(path)  # named by errors about its entries
    return doc


def files_of(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The entry's file specs, each checked to become a path inside the dataset folder (`where` names the entry)."""
    if not isinstance(entry.get("dataset_manifest"), dict):
        raise FetchError(f"{where}: the entry lacks 'dataset_manifest'")
    files = [entry["dataset_manifest"]]
    if entry.get("backgrounds"):
        files.append(entry["backgrounds"])
    files.extend(entry.get("shards", []))
    for f in files:
        for key in ("file", "sha256", "bytes", "source"):
            if not isinstance(f, dict) or key not in f:
                name = f.get("file", "?") if isinstance(f, dict) else "?"
                raise FetchError(f"{where}: the entry for {name!r} lacks {key!r}")
    # manifest.json and backgrounds.zip sit at the top of the dataset folder: plain names; shards may be in sub-folders
    safe_name(files[0]["file"], what="dataset_manifest file", source=where)
    if entry.get("backgrounds"):
        safe_name(files[1]["file"], what="backgrounds file", source=where)
    for f in entry.get("shards", []):
        safe_relpath(f["file"], what="shard file", source=where)
    return files


def manifest_entry_for(dataset_dir: str | os.PathLike, source_kind: str = "repo_path", base: str | None = None,
                       ids: dict[str, str] | None = None, description: str = "",
                       rehash: bool = False) -> dict[str, Any]:
    """A data_manifest.json entry for a built dataset folder.

    source_kind: "repo_path" (paths relative to `base`, default the repo root), "drive_path" (relative to
    /content/drive/MyDrive, or absolute), "url" (`base` is the URL prefix), "gdown_id" (`ids`: file -> Drive id).
    Shard and backgrounds checksums are taken from the dataset's manifest.json (the builder hashed the bytes it
    wrote), so a folder on Drive is not read twice; `rehash=True` hashes the files instead. The fetch verifies
    every file against these either way.
    """
    d = Path(dataset_dir).resolve()
    manifest = formats.read_manifest(d)
    if source_kind not in SOURCE_KINDS:
        raise FetchError(f"source_kind {source_kind!r}: use one of {SOURCE_KINDS}")

    def spec(file: str, recorded: dict | None = None, **extra: Any) -> dict[str, Any]:
        path = d / file
        if not path.is_file():
            raise FetchError(f"{path}: listed in the manifest but missing")
        if not rehash and recorded and recorded.get("sha256") and recorded.get("bytes") is not None:
            sha, size = recorded["sha256"], int(recorded["bytes"])
        else:
            sha, size = sha256_file(path), path.stat().st_size
        if source_kind == "repo_path":
            where = os.path.relpath(path, Path(base).resolve() if base else REPO_ROOT)
        elif source_kind == "drive_path":
            where = os.path.relpath(path, DRIVE_HOME) if str(path).startswith(str(DRIVE_HOME)) else str(path)
        elif source_kind == "url":
            if not base:
                raise FetchError("manifest_entry_for(source_kind='url') needs base='https://.../dataset/'")
            where = base.rstrip("/") + "/" + file
        else:
            if not ids or file not in ids:
                raise FetchError(f"manifest_entry_for(source_kind='gdown_id') needs ids[{file!r}]")
            where = ids[file]
        return {"file": file, "sha256": sha, "bytes": size, **extra,
                "source": {source_kind: where.replace(os.sep, "/") if source_kind != "gdown_id" else where}}

    shards = [spec(s["file"], s, samples=int(s.get("samples", 0))) for s in manifest.get("shards", [])]
    bg = manifest.get("backgrounds") if isinstance(manifest.get("backgrounds"), dict) else None
    return {"description": description or f"{d.name}: {sum(s['samples'] for s in shards)} samples",
            "dataset_manifest": spec(formats.MANIFEST), "backgrounds": spec(formats.BACKGROUNDS, bg),
            "shards": shards}


def save_entry(name: str, entry: dict[str, Any], data_manifest: str | os.PathLike = DEFAULT_DATA_MANIFEST) -> None:
    """Add or replace `name` in a data_manifest.json (created when absent), atomically."""
    path = Path(data_manifest)
    doc = (json.loads(path.read_text(encoding="utf-8")) if path.is_file()
           else {"schema": DATA_MANIFEST_SCHEMA, "datasets": {}})
    doc.setdefault("datasets", {})[name] = entry
    atomic_write_text(path, json_text(doc))
