"""fetch: copy / HTTP / gdown into the cache, verified; clear errors; nothing half-written; killed fetches resume."""
from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.fetching import catalogue as C
from eva_helpers.fetching import fetch as F
from eva_helpers.fetching import transport as T
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.errors import IntegrityError
from eva_helpers.atomic import TMP_PREFIX

QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
              b"<p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently. "
              b"Please try accessing the file again later.</p></body></html>")
DENIED_PAGE = b"<html><body>You need permission. Request access, or switch to an account with permission.</body></html>"


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    log: list

    def log_message(self, *a):  # keep pytest output clean
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        kind, _, rel = self.path.lstrip("/").partition("/")
        if kind == "quota":
            return self._send(200, QUOTA_PAGE, "text/html; charset=utf-8")
        if kind == "quota-octet":  # an HTML page served with a binary content type
            return self._send(200, QUOTA_PAGE, "application/octet-stream")
        if kind == "denied":
            return self._send(403, DENIED_PAGE, "text/html")
        data = (self.root / rel).read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and kind != "norange":
            start = int(rng.split("=")[1].split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if kind == "slow":  # a slow link: 256 KB every 50 ms
            try:
                for i in range(0, len(body), 1 << 18):
                    self.wfile.write(body[i:i + (1 << 18)])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):  # the client was killed: no traceback in a later test
                pass
            return
        if kind == "drop" and not start:  # drop the connection after half the file
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=3, n_fg=2, positions=2, size=32,
                                   shard_size=5)


@pytest.fixture()
def server(syn):
    log: list = []
    handler = type("H", (_Handler,), {"root": syn, "log": log})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for serve_forever's next poll (0.5 s by default) in every test's teardown
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    httpd.shutdown()
    httpd.server_close()


def _entry(syn, kind="repo_path", base=None):
    e = C.manifest_entry_for(syn, kind, base=str(base or syn.parent))
    e["name"] = "syn"
    if kind == "repo_path":
        e["base"] = str(syn.parent)  # repo paths resolve against the data manifest's folder (or this base)
    return e


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")
                  if p.name.endswith((".part", ".gdown")) or p.name.startswith(TMP_PREFIX))


def test_copy_fetch_verifies_and_skips(syn, tmp_path):
    entry = _entry(syn)
    assert entry["shards"][0]["source"]["repo_path"] == "ds/shards/shard-00000.zip" and len(entry["shards"]) == 3
    dest = F.fetch_dataset(entry, cache=tmp_path, progress=False)
    assert dest == tmp_path / "syn" and len(ShardDataset(dest)) == 12
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*.zip")}
    F.fetch_dataset(entry, cache=tmp_path, progress=False)  # verified: nothing rewritten
    assert mtimes == {p: p.stat().st_mtime_ns for p in dest.rglob("*.zip")}


def test_fetched_files_are_not_hashed_again(syn, tmp_path, monkeypatch):
    """Fetch and open share one verification record: a re-fetch and the first open of the fetched dataset stat its
    files, and a file changed since is hashed (and fetched) again."""
    import eva_helpers.data.verify as verify

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    entry = _entry(syn)
    dest = F.fetch_dataset(entry, cache=tmp_path, progress=False)
    hashed = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    F.fetch_dataset(entry, cache=tmp_path, progress=False)
    ShardDataset(dest)
    assert hashed == []
    shard = dest / "shards" / "shard-00001.zip"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")  # damaged in place: same size, new mtime
    F.fetch_dataset(entry, cache=tmp_path, progress=False)
    assert hashed == ["shard-00001.zip"] and shard.read_bytes() == (syn / "shards" / "shard-00001.zip").read_bytes()


def test_fetch_by_name_from_a_data_manifest(syn, tmp_path):
    dm = tmp_path / "data_manifest.json"
    C.save_entry("mine", C.manifest_entry_for(syn, "repo_path", base=str(tmp_path)), dm)
    doc = json.loads(dm.read_text())
    assert doc["schema"] == C.DATA_MANIFEST_SCHEMA and "mine" in doc["datasets"]
    assert (F.fetch_dataset("mine", data_manifest=dm, cache=tmp_path / "c", progress=False) / "manifest.json").is_file()
    with pytest.raises(C.FetchError, match="mine"):
        F.fetch_dataset("nope", data_manifest=dm, cache=tmp_path / "c", progress=False)


def test_entry_missing_a_shard_is_refused(syn, tmp_path):
    entry = _entry(syn)
    entry["shards"] = entry["shards"][:-1]
    with pytest.raises(C.FetchError, match="lacks 1 shard"):
        F.fetch_dataset(entry, cache=tmp_path, progress=False)


def test_the_repo_data_manifest_parses():
    doc = C.load_data_manifest()
    assert "sample" in doc["datasets"]


def test_checksum_mismatch_is_clear_and_leaves_nothing(syn, tmp_path):
    entry = _entry(syn)
    entry["shards"][1]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="shard-00001.zip: checksum"):
        F.fetch_dataset(entry, cache=tmp_path, progress=False, backoff=0)
    assert not (tmp_path / "syn" / "shards" / "shard-00001.zip").exists() and _leftovers(tmp_path) == []


def test_truncated_source_is_clear_and_leaves_nothing(syn, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in syn.rglob("*"):
        if f.is_file():
            (src / f.relative_to(syn)).parent.mkdir(parents=True, exist_ok=True)
            (src / f.relative_to(syn)).write_bytes(f.read_bytes())
    entry = C.manifest_entry_for(src, "repo_path", base=str(tmp_path))
    entry.update(name="t", base=str(tmp_path))
    shard = src / "shards" / "shard-00002.zip"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match=r"shard-00002.zip: .* \(truncated"):
        F.fetch_dataset(entry, cache=tmp_path / "c", progress=False, backoff=0)
    assert _leftovers(tmp_path / "c") == [] and not (tmp_path / "c" / "t" / "shards" / "shard-00002.zip").exists()


def test_http_fetch_and_resume_after_dropped_connection(syn, tmp_path, server):
    url, log = server
    entry = _entry(syn, "url", base=url + "/drop")
    # first call with no retries: the drop leaves a .part and a clear error saying to run again
    with pytest.raises(C.FetchError, match="run the fetch again"):
        F.fetch_dataset(entry, cache=tmp_path, retries=0, progress=False)
    part = tmp_path / "syn" / "manifest.json.part"
    assert part.exists() and 0 < part.stat().st_size < entry["dataset_manifest"]["bytes"]
    assert not (tmp_path / "syn" / "manifest.json").exists()
    dest = F.fetch_dataset(entry, cache=tmp_path, retries=3, backoff=0, progress=False)
    assert len(ShardDataset(dest)) == 12 and _leftovers(tmp_path) == []
    resumed = [r for p, r in log if r]
    assert resumed and all(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in resumed)


def test_http_server_ignoring_range_restarts_cleanly(syn, tmp_path, server):
    url, _ = server
    entry = _entry(syn, "url", base=url + "/norange")
    part = tmp_path / "syn" / "backgrounds.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PK garbage prefix")
    dest = F.fetch_dataset(entry, cache=tmp_path, backoff=0, progress=False)
    assert (dest / "backgrounds.zip").read_bytes() == (syn / "backgrounds.zip").read_bytes()


@pytest.mark.parametrize("path,err", [("quota", T.QuotaError), ("quota-octet", T.QuotaError),
                                      ("denied", T.AccessDeniedError)])
def test_http_html_answers_are_clear_errors(syn, tmp_path, server, path, err):
    url, _ = server
    entry = _entry(syn, "url", base=f"{url}/{path}")
    with pytest.raises(err) as exc:
        F.fetch_dataset(entry, cache=tmp_path, backoff=0, progress=False)
    assert "\n" not in str(exc.value) and "manifest.json" in str(exc.value)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "syn" / "manifest.json").exists()


def test_gdown_quota_page_and_errors(syn, tmp_path, monkeypatch, server):
    """Our gdown wrapper: what gdown saves or raises is classified; nothing reaches the internet."""
    import gdown
    from gdown.exceptions import FileURLRetrievalError

    url, _ = server
    calls = []

    def fake_download(url_=None, output=None, quiet=False, id=None, resume=False, **kw):
        calls.append((id, resume))
        if id == "html":  # older gdown saved the quota page itself
            Path(output).write_bytes(QUOTA_PAGE)
            return output
        if id == "raise":
            raise FileURLRetrievalError("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded "
                                        "this file recently.\n")
        if id == "private":
            raise FileURLRetrievalError("Cannot retrieve the public link of the file. You may need to change the "
                                        "permission to 'Anyone with the link'")
        Path(output).write_bytes((syn / id).read_bytes())
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    ok = C.manifest_entry_for(syn, "gdown_id", ids={f: f for f in ["manifest.json", "backgrounds.zip"] +
                                                   [f"shards/shard-0000{k}.zip" for k in range(3)]})
    ok["name"] = "g"
    assert len(ShardDataset(F.fetch_dataset(ok, cache=tmp_path, progress=False))) == 12
    assert len(calls) == 5 and all(resume for _, resume in calls)  # manifest, backgrounds, 3 shards
    for fid, err in (("html", T.QuotaError), ("raise", T.QuotaError), ("private", T.AccessDeniedError)):
        bad = json.loads(json.dumps(ok))
        bad["name"] = f"g-{fid}"
        bad["shards"][0]["source"] = {"gdown_id": fid}
        with pytest.raises(err, match="shard-00000.zip"):
            F.fetch_dataset(bad, cache=tmp_path, backoff=0, progress=False)
        assert not (tmp_path / bad["name"] / "shards" / "shard-00000.zip").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_fetch_killed_midway_in_a_subprocess_resumes(syn, tmp_path, server):
    """A real kill: a child running fetch_file over a slow link is SIGKILLed; the next fetch resumes its .part."""
    import signal
    import subprocess
    import sys
    import time

    from eva_helpers.atomic import sha256_file

    url, log = server
    big = syn / "big.bin"
    big.write_bytes(bytes(range(256)) * 40000)  # 10 MB; /slow/ serves it at ~5 MB/s
    spec = {"file": "big.bin", "sha256": sha256_file(big), "bytes": big.stat().st_size,
            "source": {"url": f"{url}/slow/big.bin"}}
    dest = tmp_path / "c" / "big.bin"
    part = Path(str(dest) + ".part")
    code = ("import json, sys; from pathlib import Path; from eva_helpers.fetching.transport import fetch_file; "
            "fetch_file(json.loads(sys.argv[1]), Path(sys.argv[2]), progress=False)")
    try:
        p = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec), str(dest)],
                             cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 30
        while (not part.exists() or part.stat().st_size < 2 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        p.kill()
        p.wait()
        assert p.returncode == -signal.SIGKILL, f"the fetch was not running when killed (rc={p.returncode})"
        have = part.stat().st_size
        assert 0 < have < big.stat().st_size and not dest.exists()  # killed mid-download: a partial .part only
        spec["source"] = {"url": f"{url}/x/big.bin"}
        T.fetch_file(spec, dest, progress=False, backoff=0)
        assert dest.read_bytes() == big.read_bytes() and not part.exists()
        assert ("/x/big.bin", f"bytes={have}-") in log
    finally:
        big.unlink()


def test_corrupt_source_is_caught_with_recorded_checksums(syn, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(syn, src)
    shard = src / "shards" / "shard-00000.zip"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF
    shard.write_bytes(bytes(data))
    entry = C.manifest_entry_for(src, "drive_path")  # absolute paths outside Drive; checksums from manifest.json
    assert entry["shards"][0]["source"]["drive_path"] == str(shard)
    with pytest.raises(IntegrityError, match="shard-00000.zip: checksum"):
        F.fetch_dataset(entry, cache=tmp_path / "c", progress=False)
    assert C.manifest_entry_for(src, "drive_path", rehash=True)["shards"][0]["sha256"] != entry["shards"][0]["sha256"]
