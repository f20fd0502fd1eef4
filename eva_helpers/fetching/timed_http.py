"""urllib with every wait of a response bounded: connect, TLS, status line, headers, redirects and body alike.

A socket timeout alone bounds one wait, not the answer: a server sending one header byte a second keeps every read
alive for hours. Here each wait (connect, handshake, each socket read) is given at most `Limits.read_timeout`, less
as the head's deadline nears, and is preceded by the caller's check (the transfer's speed floor), so no stretch of
time without a check is longer than one wait.
"""
from __future__ import annotations

import functools
import http.client
import io
import socket
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


class HeadTimeout(TimeoutError):
    """The status line and headers did not all arrive by the head's deadline."""


@dataclass
class Limits:
    """What bounds the waits of one response.

    read_timeout: the longest one wait may take; check: called before every wait (raises to stop the transfer);
    head_by: time.monotonic() by which the status line and all headers must be in, None once they are (the caller
    clears it when it starts on the body, so error pages and redirects count as head)."""

    read_timeout: float
    check: Callable[[], None]
    head_by: float | None = None

    def wait(self) -> float:
        """Seconds the next wait may take; raises HeadTimeout once the head's deadline has passed."""
        self.check()
        if self.head_by is None:
            return self.read_timeout
        left = self.head_by - time.monotonic()
        if left <= 0:
            raise HeadTimeout("the response head's deadline passed")
        return min(self.read_timeout, left)

    @contextmanager
    def waiting(self, sock: socket.socket | None = None) -> Iterator[float]:
        """Time one wait: sets `sock`'s timeout; a timeout cut short by the head's deadline becomes HeadTimeout."""
        wait = self.wait()
        if sock is not None:
            sock.settimeout(wait)
        try:
            yield wait
        except TimeoutError as e:
            if wait < self.read_timeout and not isinstance(e, HeadTimeout):
                raise HeadTimeout("the response head's deadline passed") from None
            raise


class _TimedReads(io.RawIOBase):
    """The socket as http.client reads it, each read given only `Limits.wait()` seconds."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self.raw, self.sock, self.limits = raw, sock, limits

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int | None:
        with self.limits.waiting(self.sock):
            return self.raw.readinto(b)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self.raw.close()  # releases http.client's reference to the socket
        super().close()


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args, limits: Limits, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_TimedReads(self.fp.detach(), sock, limits))


class _Timed:
    """Connection mixin: connect and handshake within `Limits.wait()`; responses read through the limits."""

    def __init__(self, *args, limits: Limits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.response_class = functools.partial(_Response, limits=limits)
        self._create_connection = self._connect

    def _connect(self, address, timeout, source_address=None) -> socket.socket:
        with self.limits.waiting() as wait:
            sock = socket.create_connection(address, wait, source_address)
        sock.settimeout(self.limits.wait())  # an HTTPS handshake follows: it gets only what is left
        return sock


class _HTTPConnection(_Timed, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Timed, http.client.HTTPSConnection):
    pass


class _Open:
    """Handler mixin: open connections that obey `self.limits`."""

    limits: Limits

    def do_open(self, http_class, req, **kwargs):
        timed = _HTTPSConnection if issubclass(http_class, http.client.HTTPSConnection) else _HTTPConnection
        return super().do_open(functools.partial(timed, limits=self.limits), req, **kwargs)


class _HTTPHandler(_Open, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_Open, urllib.request.HTTPSHandler):
    pass


def open_url(request: urllib.request.Request, limits: Limits) -> http.client.HTTPResponse:
    """urllib.request.urlopen(request), every wait under `limits`, redirects included (they share its deadline)."""
    handlers = [_HTTPHandler(), _HTTPSHandler()]
    for h in handlers:
        h.limits = limits
    return urllib.request.build_opener(*handlers).open(request, timeout=limits.read_timeout)
