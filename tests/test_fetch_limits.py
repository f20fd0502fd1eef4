"""A download cannot run away: an endless body stops at the listed size, a trickle gives up within its deadline, and
a resume still works; each ends in one line naming the file. Local servers on 127.0.0.1, limits monkeypatched small."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from eva_helpers.fetching import transport as F

LISTED = 2048
BODY = bytes(range(256)) * (LISTED // 256)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        kind = self.path.strip("/")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()  # no Content-Length: the body ends when the connection does
        try:
            if kind == "endless":
                while True:
                    self.wfile.write(b"x" * 4096)
            elif kind == "trickle":  # a byte every 0.2 s, for ever
                while True:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif kind == "silent":  # the headers, then nothing
                time.sleep(10)
        except OSError:  # the client hung up
            pass


@pytest.fixture()
def url():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    # shutdown() waits for serve_forever's next poll (0.5 s by default) in every test's teardown
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _spec(url: str, kind: str) -> dict:
    return {"file": "data.bin", "sha256": "0" * 64, "bytes": LISTED, "source": {"url": f"{url}/{kind}"}}


def test_an_endless_body_stops_at_the_listed_size(tmp_path, url, monkeypatch):
    monkeypatch.setattr(F, "_CHUNK", 1024)
    t0 = time.monotonic()
    with pytest.raises(F.FetchError) as e:
        F.fetch_file(_spec(url, "endless"), tmp_path / "data.bin", retries=3, backoff=0, progress=False)
    assert time.monotonic() - t0 < 10
    part = tmp_path / "data.bin.part"
    assert part.stat().st_size <= LISTED + 1024
    msg = str(e.value)
    assert "data.bin" in msg and "sent more than the 2048 bytes" in msg and "\n" not in msg
    assert not (tmp_path / "data.bin").exists()


@pytest.mark.slow  # waits out the deadline
def test_a_trickle_gives_up_within_its_deadline(tmp_path, url, monkeypatch):
    monkeypatch.setattr(F, "MIN_SPEED", 1000)
    monkeypatch.setattr(F, "SPEED_WINDOW_S", 1.0)
    monkeypatch.setattr(F, "READ_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(F.FetchError) as e:
        F.fetch_file(_spec(url, "trickle"), tmp_path / "data.bin", retries=0, progress=False)
    took = time.monotonic() - t0
    assert took < 1.0 + 1.0 + 1.5  # the window, one read's wait, and slack
    msg = str(e.value)
    assert "data.bin" in msg and "bytes so far" in msg and "minimum of 1000 bytes/s" in msg and "\n" not in msg
    assert 0 < (tmp_path / "data.bin.part").stat().st_size < 100  # kept for a resume


def test_a_silent_server_fails_the_try_after_the_read_timeout(tmp_path, url, monkeypatch):
    monkeypatch.setattr(F, "READ_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(F.FetchError) as e:
        F.fetch_file(_spec(url, "silent"), tmp_path / "data.bin", retries=0, progress=False)
    assert time.monotonic() - t0 < 3
    assert "no data for 0.5 s after 0 bytes" in str(e.value) and "\n" not in str(e.value)


def test_a_local_source_larger_than_listed_is_not_copied_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "_CHUNK", 1024)
    big = tmp_path / "src.bin"
    big.write_bytes(b"y" * (50 * LISTED))
    spec = {"file": "data.bin", "sha256": "0" * 64, "bytes": LISTED, "source": {"drive_path": str(big)}}
    written = []
    real_copy = F._copy

    def spy(src, part, expected):
        real_copy(src, part, expected)
        written.append(part.stat().st_size)

    monkeypatch.setattr(F, "_copy", spy)
    with pytest.raises(F.IntegrityError):
        F.fetch_file(spec, tmp_path / "out" / "data.bin", retries=0, progress=False)
    assert written == [LISTED + 1]
