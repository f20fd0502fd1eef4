"""Fetch a dataset listed in `data_manifest.json` into the local cache: copy / gdown / HTTP, verify, retry, resume.

Every file goes to `<name>.part` first and is renamed onto its final name only after its size and sha256 match the
entry, so a final name is always a verified file. A killed fetch keeps the `.part`: HTTP resumes it with a Range
request, a copy resumes at its length, gdown resumes its own partial file. Already-verified files are skipped
(a small `.eva-verified.json` remembers size + mtime + sha256 so a re-run does not re-hash gigabytes).

A download cannot run away: it stops as soon as the bytes received exceed the size the entry lists (the `.part` never
grows past it; a source that sends more is not the listed file, so that is an error, not a retry), a read that waits
READ_TIMEOUT_S seconds for a byte fails the try, and so does a transfer slower than MIN_SPEED bytes/s averaged over
SPEED_WINDOW_S seconds (a trickle that keeps every read alive). A failed try is retried and resumes from the `.part`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from eva_helpers.atomic import atomic_write_text, check_output_folder, fsync_dir, json_text, sha256_file
from eva_helpers.errors import EvaError, IntegrityError
from eva_helpers.paths import safe_name, safe_relpath

DATA_MANIFEST_SCHEMA = "eva-data-manifest/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_MANIFEST = REPO_ROOT / "data_manifest.json"
# A pip-installed package (Colab) has no repo top level: it ships the same file (a symlink in the repo) beside its code.
PACKAGED_DATA_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifest.json"
DRIVE_HOME = Path("/content/drive/MyDrive")
VERIFIED = ".eva-verified.json"
SOURCE_KINDS = ("repo_path", "drive_path", "gdown_id", "url")
_CHUNK = 1 << 20  # one read buffer
_SNIFF = 1 << 16
MIN_SPEED = 20_000  # bytes/s, averaged over SPEED_WINDOW_S: below it a try fails (and is retried, resuming)
SPEED_WINDOW_S = 60.0
READ_TIMEOUT_S = 60.0  # seconds one read may wait for its first byte


class FetchError(EvaError):
    """A file could not be fetched; the message says what to do."""


class QuotaError(FetchError):
    """Google Drive's download quota page came back instead of the file."""


class AccessDeniedError(FetchError):
    """The file is not shared publicly (or the link is wrong)."""


class HtmlInsteadOfFileError(FetchError):
    """An HTML page came back where a data file was expected."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 5xx, truncated transfer)."""


# ---- the data manifest ------------------------------------------------------------------------------
def load_data_manifest(data_manifest: str | os.PathLike | dict | None = None) -> dict[str, Any]:
    """The repo's data_manifest.json (or a given path/dict); records its folder as `_base` for repo paths."""
    if isinstance(data_manifest, dict):
        return data_manifest
    if data_manifest is None:
        path = DEFAULT_DATA_MANIFEST if DEFAULT_DATA_MANIFEST.is_file() else PACKAGED_DATA_MANIFEST
    else:
        path = Path(data_manifest)
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


def _files_of(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
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


# ---- one file ---------------------------------------------------------------------------------------
def _sniff(part: Path, file: str, source: str) -> None:
    """Refuse an HTML page (quota, permission, login) saved in place of a data file."""
    with open(part, "rb") as f:
        head = f.read(_SNIFF)
    if file.endswith(".zip") and head.startswith(b"PK"):
        return
    if file.endswith(".json") and head.lstrip().startswith(b"{"):
        return
    text = head.decode("utf-8", "replace").lower()
    if "<html" not in text and "<!doctype" not in text:
        return  # not HTML: size/sha256 checks decide
    part.unlink(missing_ok=True)
    _raise_for_page(text, file, source)


def _raise_for_page(text: str, file: str, source: str) -> None:
    if "too many users have viewed or downloaded" in text or "quota" in text:
        raise QuotaError(f"{file}: Google Drive download quota exceeded for {source}; wait ~24 h, or copy the "
                         "file into your own Drive and use its drive_path/gdown_id")
    if "permission" in text or "access denied" in text or "sign in" in text or "public link" in text:
        raise AccessDeniedError(f"{file}: {source} is not shared; set sharing to 'Anyone with the link' "
                                "or use a drive_path")
    raise HtmlInsteadOfFileError(f"{file}: got an HTML page instead of the file from {source}; check the link")


def _copy(src: Path, part: Path, expected: int) -> None:
    """Copy (or resume copying) `src` into `part`, never past one byte more than the listed size."""
    if not src.is_file():
        hint = " (mount Drive first: mount_drive())" if str(src).startswith("/content/drive") else ""
        raise FetchError(f"{src}: source file not found{hint}")
    have = part.stat().st_size if part.exists() else 0
    if have > expected or have > src.stat().st_size:
        have = 0
    with open(src, "rb") as fin, open(part, "ab" if have else "wb") as fout:
        fin.seek(have)  # resume a copy killed midway
        left = expected + 1 - have  # one byte past the listed size is enough to tell the source is larger
        while left > 0 and (chunk := fin.read(min(_CHUNK, left))):
            fout.write(chunk)
            left -= len(chunk)


class _Pace:
    """Fails a try whose average speed over the last SPEED_WINDOW_S seconds fell below MIN_SPEED bytes/s."""

    def __init__(self, have: int) -> None:
        self.total = have
        self.t0, self.at_t0 = time.monotonic(), have

    def add(self, n: int) -> None:
        self.total += n
        now = time.monotonic()
        if now - self.t0 < SPEED_WINDOW_S:
            return
        speed = (self.total - self.at_t0) / (now - self.t0)
        if speed < MIN_SPEED:
            raise _Transient(f"{self.total} bytes so far, then {speed:.0f} bytes/s over the last "
                             f"{now - self.t0:.0f} s, below the minimum of {MIN_SPEED} bytes/s")
        self.t0, self.at_t0 = now, self.total


def _http(url: str, part: Path, expected: int, bar: Callable[[int], None]) -> None:
    import http.client
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    if have >= expected > 0:
        if have == expected:
            return
        part.unlink()
        have = 0
    headers = {"User-Agent": "eva-maskdepth"}
    if have:
        headers["Range"] = f"bytes={have}-"
    name = part.name[:-5]
    got = 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=READ_TIMEOUT_S) as r:
            if have and r.status != 206:  # server ignored the Range: start over
                have = 0
            if "text/html" in r.headers.get("Content-Type", ""):
                part.unlink(missing_ok=True)
                _raise_for_page(r.read(_SNIFF).decode("utf-8", "replace").lower(), part.name[:-5], url)
            length = r.headers.get("Content-Length")
            bar(have)
            pace = _Pace(have)
            with open(part, "ab" if have else "wb") as f:
                while chunk := r.read1(_CHUNK):  # what has arrived: a trickle cannot hold one read open for long
                    if have + got + len(chunk) > expected:
                        f.write(chunk[:expected - have - got])  # the .part never grows past the listed size
                        raise FetchError(f"{name}: {url} sent more than the {expected} bytes the data manifest lists "
                                         "(stopped there); the file at the source changed: regenerate the entry or "
                                         "check the link")
                    f.write(chunk)
                    got += len(chunk)
                    bar(len(chunk))
                    pace.add(len(chunk))
            if length is not None and got < int(length):
                raise _Transient(f"connection dropped after {have + got} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the .part is not a prefix of this file
            part.unlink(missing_ok=True)
            raise _Transient("range not satisfiable; restarting") from None
        if e.code in (401, 403):
            body = e.read(_SNIFF).decode("utf-8", "replace").lower()
            if "quota" in body or "too many users" in body:
                _raise_for_page(body, part.name[:-5], url)
            raise AccessDeniedError(f"{part.name[:-5]}: HTTP {e.code} from {url}; the file is not shared with "
                                    "you") from None
        if e.code == 404:
            raise FetchError(f"{part.name[:-5]}: HTTP 404 from {url}; the link is wrong or the file was "
                             "removed") from None
        raise _Transient(f"HTTP {e.code}") from None
    except TimeoutError:
        raise _Transient(f"no data for {READ_TIMEOUT_S:g} s after {have + got} bytes") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as e:
        if isinstance(getattr(e, "reason", None), TimeoutError):
            raise _Transient(f"no answer from {url} within {READ_TIMEOUT_S:g} s") from None
        raise _Transient(str(e) or type(e).__name__) from None


def _gdown(file_id: str, part: Path, quiet: bool) -> None:
    """gdown 5.2 (Colab) and 6.x share `download(id=, output=, quiet=, resume=)`; gdown keeps its own partial."""
    import gdown

    stage = part.with_name(part.name + ".gdown")  # gdown's resumable temp files live in here
    stage.mkdir(exist_ok=True)
    out = stage / "file"
    try:
        res = gdown.download(id=file_id, output=str(out), quiet=quiet, resume=True)
    except Exception as e:  # gdown.exceptions.FileURLRetrievalError / DownloadError, requests errors
        text = str(e).lower()
        if "too many users" in text or "quota" in text or "permission" in text or "public link" in text:
            shutil.rmtree(stage, ignore_errors=True)  # permanent: nothing to resume
            _raise_for_page(text, part.name[:-5], f"gdown id {file_id}")
        raise _Transient(f"gdown: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if res is None or not out.is_file():
        raise _Transient(f"gdown returned nothing for id {file_id}")
    os.replace(out, part)
    shutil.rmtree(stage, ignore_errors=True)


def fetch_file(spec: dict[str, Any], target: Path, *, base: str | None = None, retries: int = 4,
               backoff: float = 1.0, progress: bool = True) -> Path:
    """Get one file described by `spec` ({file, sha256, bytes, source}) to `target`, verified; skip if already so."""
    from tqdm.auto import tqdm

    expected, sha = int(spec["bytes"]), spec["sha256"]
    if _is_verified(target, expected, sha):
        return target
    src = spec["source"]
    kind = next((k for k in SOURCE_KINDS if k in src), None)
    if kind is None:
        raise FetchError(f"{spec['file']}: source needs one of {SOURCE_KINDS}, got {sorted(src)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            with tqdm(total=expected, unit="B", unit_scale=True, desc=target.name, disable=not progress,
                      leave=False) as bar:
                if kind in ("repo_path", "drive_path"):
                    root = Path(base or REPO_ROOT) if kind == "repo_path" else DRIVE_HOME
                    p = Path(src[kind]).expanduser()
                    _copy(p if p.is_absolute() else root / p, part, expected)
                elif kind == "url":
                    _http(src["url"], part, expected, bar.update)
                else:
                    _gdown(src["gdown_id"], part, quiet=not progress)
            _sniff(part, spec["file"], str(src[kind]))
            size = part.stat().st_size
            if size < expected and kind in ("repo_path", "drive_path"):  # a short local file will not grow
                part.unlink()
                raise IntegrityError(f"{target.name}: source {src[kind]} has {size} of {expected} bytes "
                                     "(truncated copy?); copy it again or regenerate the entry")
            if size < expected:
                raise _Transient(f"got {size} of {expected} bytes")
            if size > expected or sha256_file(part) != sha:
                part.unlink()
                raise IntegrityError(f"{target.name}: checksum/size mismatch against the data manifest (source "
                                     f"{src[kind]}); the source changed: regenerate its entry or re-upload the file")
            with open(part, "rb+") as f:
                os.fsync(f.fileno())  # the final name must never point at unflushed bytes
            os.replace(part, target)
            fsync_dir(target.parent)
            _remember(target, sha)
            return target
        except _Transient as e:
            if attempt == retries:
                raise FetchError(f"{target.name}: failed after {retries + 1} tries (last: {e}); run the fetch "
                                 "again to resume") from None
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _is_verified(target: Path, expected: int, sha: str) -> bool:
    if not target.is_file() or target.stat().st_size != expected:
        return False
    st = target.stat()
    rec = _verified(target.parent).get(target.name)
    if rec == [st.st_size, st.st_mtime_ns, sha]:
        return True
    if sha256_file(target) == sha:
        _remember(target, sha)
        return True
    return False


def _verified(folder: Path) -> dict[str, list]:
    try:
        return json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}


def _remember(target: Path, sha: str) -> None:
    rec = _verified(target.parent)
    st = target.stat()
    rec[target.name] = [st.st_size, st.st_mtime_ns, sha]
    atomic_write_text(target.parent / VERIFIED, json.dumps(rec, sort_keys=True))


# ---- a whole dataset --------------------------------------------------------------------------------
def fetch_dataset(name_or_entry: str | dict[str, Any], *, data_manifest: str | os.PathLike | dict | None = None,
                  cache: str | os.PathLike | None = None, retries: int = 4, progress: bool = True,
                  backoff: float = 1.0) -> Path:
    """Fetch a dataset (by name from data_manifest.json, or an entry dict) into `cache/<name>`; returns that folder.

    The folder holds manifest.json, backgrounds.zip and shards/: ready for `ShardDataset`.
    """
    from tqdm.auto import tqdm

    from eva_helpers.paths import default_cache

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
    files = _files_of(entry, f"{source}: dataset {name!r}")
    if not entry.get("shards"):
        raise FetchError(f"dataset {name!r} lists no shards in the data manifest (placeholder entry?)")
    dest = cache_dir / name
    for spec in tqdm(files, desc=f"fetch {name}", unit="file", disable=not progress):
        fetch_file(spec, dest / spec["file"], base=entry.get("base", base), retries=retries,
                   backoff=backoff, progress=progress)
    from eva_helpers.data import formats

    listed = [safe_relpath(s.get("file"), what="shard file", source=dest / formats.MANIFEST)
              for s in formats.read_manifest(dest).get("shards", [])]
    missing = [f for f in listed if not (dest / f).is_file()]
    if missing:
        raise FetchError(f"dataset {name!r}: data manifest entry lacks {len(missing)} shard(s) of its manifest.json "
                         f"(first {missing[0]}); regenerate the entry with manifest_entry_for()")
    return dest


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
    from eva_helpers.data import formats

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
