"""One file from its source to its place, verified: copy / gdown / HTTP, with retries, resume and limits.

Every file goes to `<name>.part` first and is renamed onto its final name only after its size and sha256 match the
entry, so a final name is always a verified file. A killed fetch keeps the `.part`: HTTP resumes it with a Range
request, a copy resumes at its length, gdown resumes its own partial file. Files already verified are skipped: the
dataset's verification record (data/verify.py, size + mtime + ctime + inode + sha256) spares a re-run re-hashing
gigabytes, and the same record lets the first open of the fetched dataset skip hashing it again.

A download cannot run away: it stops as soon as the bytes received exceed the size the entry lists (the `.part` never
grows past it; a source that sends more is not the listed file, so that is an error, not a retry). A try fails (and
is retried, resuming) when one wait (connect, a read) lasts READ_TIMEOUT_S, or when the status line and headers are
not all in HEADERS_DEADLINE_S after it started (a server can keep every read alive by sending a header byte at a
time). Over all tries of a file, a transfer slower than MIN_SPEED bytes/s averaged over SPEED_WINDOW_S seconds (waits
for heads, failed tries and backoff included) ends the fetch: so a source that sends too little, whatever else it
does, ends it within `worst_case_s()` seconds of the last window it kept up in (timed_http.py enforces every wait).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from eva_helpers.atomic import fsync_dir, sha256_file
from eva_helpers.data.verify import VerifyRecord, is_verified
from eva_helpers.errors import IntegrityError
from eva_helpers.fetching import catalogue
from eva_helpers.fetching.catalogue import SOURCE_KINDS, FetchError

_CHUNK = 1 << 20  # one read buffer


_SNIFF = 1 << 16


MIN_SPEED = 20_000  # bytes/s, averaged over SPEED_WINDOW_S across all tries of a file: below it the fetch ends


SPEED_WINDOW_S = 60.0


READ_TIMEOUT_S = 30.0  # seconds one wait (connect, TLS handshake, a socket read) may last: longer fails the try


HEADERS_DEADLINE_S = 30.0  # seconds from a try's start to its last header (redirects, error pages included)


def worst_case_s(retries: int = 4, backoff: float = 1.0) -> float:
    """Seconds within which a source sending less than MIN_SPEED bytes/s ends the fetch of a file with an error.

    The speed floor is checked before every wait and on both sides of every backoff pause; its first window closes
    SPEED_WINDOW_S after the first try starts, and the longest stretch between checks is one wait or one pause. DNS
    lookups are the resolver's, outside this bound."""
    longest_sleep = backoff * 2 ** (retries - 1) if retries > 0 else 0.0
    return SPEED_WINDOW_S + max(READ_TIMEOUT_S, longest_sleep)


class QuotaError(FetchError):
    """Google Drive's download quota page came back instead of the file."""


class AccessDeniedError(FetchError):
    """The file is not shared publicly (or the link is wrong)."""


class HtmlInsteadOfFileError(FetchError):
    """An HTML page came back where a data file was expected."""


_AGAIN = "run the fetch again later (it resumes from what it has), or download the file by hand to "


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 5xx, truncated transfer)."""


class _TooSlow(Exception):
    """The transfer fell below the speed floor: retrying at once would not help."""


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
    """The speed floor of one file over all its tries: each SPEED_WINDOW_S window must bring MIN_SPEED bytes/s."""

    def __init__(self, have: int) -> None:
        self.total = have
        self.t0, self.at_t0 = time.monotonic(), have

    def add(self, n: int) -> None:
        self.total += n
        self.check()

    def check(self) -> None:
        now = time.monotonic()
        if now - self.t0 < SPEED_WINDOW_S:
            return
        got, took = self.total - self.at_t0, now - self.t0
        if got == 0:
            raise _TooSlow(f"no data for {took:.0f} s")
        if got / took < MIN_SPEED:
            raise _TooSlow(f"{self.total} bytes so far, then {got / took:.0f} bytes/s over the last {took:.0f} s, "
                           f"below the minimum of {MIN_SPEED} bytes/s")
        self.t0, self.at_t0 = now, self.total


def _http(url: str, part: Path, expected: int, bar: Callable[[int], None], pace: _Pace) -> None:
    import http.client
    import urllib.error
    import urllib.request

    from eva_helpers.fetching.timed_http import HeadTimeout, Limits, open_url

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
    limits = Limits(READ_TIMEOUT_S, pace.check, head_by=time.monotonic() + HEADERS_DEADLINE_S)
    try:
        with open_url(urllib.request.Request(url, headers=headers), limits) as r:
            if have and r.status != 206:  # server ignored the Range: start over
                have = 0
            if "text/html" in r.headers.get("Content-Type", ""):
                part.unlink(missing_ok=True)
                _raise_for_page(r.read(_SNIFF).decode("utf-8", "replace").lower(), part.name[:-5], url)
            length = r.headers.get("Content-Length")
            limits.head_by = None  # the body: each read's wait and the speed floor bound it from here
            bar(have)
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
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        late = e if isinstance(e, TimeoutError) else getattr(e, "reason", None)
        if isinstance(late, HeadTimeout):
            raise _Transient(f"no status line and headers within {HEADERS_DEADLINE_S:g} s") from None
        if isinstance(late, TimeoutError):
            if limits.head_by is not None:
                raise _Transient(f"no answer for {READ_TIMEOUT_S:g} s") from None
            raise _Transient(f"no data for {READ_TIMEOUT_S:g} s after {have + got} bytes") from None
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
               backoff: float = 1.0, progress: bool = True, record: VerifyRecord | None = None) -> Path:
    """Get one file described by `spec` ({file, sha256, bytes, source}) to `target`, verified; skip if already so.

    `record`: the verification record of the dataset folder `spec["file"]` is relative to (fetch_dataset's); without
    one, the file is recorded in its own folder's record. The caller saves a record it passes."""
    from tqdm.auto import tqdm

    expected, sha = int(spec["bytes"]), spec["sha256"]
    own = record is None
    if own:
        record, spec = VerifyRecord(target.parent), {**spec, "file": target.name}
    if is_verified(record.dir, {"file": spec["file"], "sha256": sha, "bytes": expected}, record):
        if own:
            record.save()
        return target
    src = spec["source"]
    kind = next((k for k in SOURCE_KINDS if k in src), None)
    if kind is None:
        raise FetchError(f"{spec['file']}: source needs one of {SOURCE_KINDS}, got {sorted(src)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    pace = _Pace(part.stat().st_size if part.exists() else 0)  # one floor over all tries: a retry does not reset it
    check = pace.check if kind == "url" else lambda: None  # gdown and copies count no bytes here
    last = ""
    for attempt in range(retries + 1):
        try:
            check()
            if attempt:  # a retry, after a pause that doubles each time; the floor is checked on both sides of it
                time.sleep(backoff * 2 ** (attempt - 1))
                check()
            with tqdm(total=expected, unit="B", unit_scale=True, desc=target.name, disable=not progress,
                      leave=False) as bar:
                if kind in ("repo_path", "drive_path"):
                    root = Path(base or catalogue.REPO_ROOT) if kind == "repo_path" else catalogue.DRIVE_HOME
                    p = Path(src[kind]).expanduser()
                    _copy(p if p.is_absolute() else root / p, part, expected)
                elif kind == "url":
                    _http(src["url"], part, expected, bar.update, pace)
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
            record.add(spec["file"], target.stat(), sha)  # hashed above, as the .part
            if own:
                record.save()
            return target
        except _TooSlow as e:
            raise FetchError(f"{target.name}: {src[kind]} is too slow ({e}{last}); {_AGAIN}{target}") from None
        except _Transient as e:
            if attempt == retries:
                raise FetchError(f"{target.name}: {src[kind]} failed after {retries + 1} tries (last: {e}); "
                                 f"{_AGAIN}{target}") from None
            last = f"; last error: {e}"
    raise AssertionError("unreachable")
