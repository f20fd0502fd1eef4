"""How the package stops when asked to: SIGINT (Ctrl-C, a notebook's Stop button) and SIGTERM (a runtime or a job
scheduler stopping the process) end a command the same way, keeping what it had saved or verified.

- `sigterm_interrupts()` (the CLI, for the whole command): SIGTERM raises `Interrupted`, a KeyboardInterrupt, so every
  command takes its Ctrl-C path (builds keep their verified shards, fetches their verified files).
- `StopRequest` (training only): both signals just set a flag, which the training loop reads after each step and
  answers by saving a checkpoint of that step before it raises `Interrupted`. A second signal acts at once, as before.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT or SIGTERM; `signum` says which (the CLI exits with 128 + signum)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    def __reduce__(self):  # picklable with its signal (raised in a worker, re-raised in the main process)
        return type(self), (str(self), self.signum)


def signal_name(signum: int) -> str:
    return {signal.SIGINT: "SIGINT (Ctrl-C or Stop)", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")


def exit_code(e: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside: SIGTERM raises `Interrupted(signum=SIGTERM)` in the main thread, as Ctrl-C raises
    KeyboardInterrupt. The previous handler is restored on exit."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum=signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class StopRequest:
    """A context in which SIGINT and SIGTERM only set `signum`: the training loop stops at the end of the step it is
    in, so the checkpoint it saves there is one a resume continues from exactly (a KeyboardInterrupt raised in the
    middle of an optimizer step could leave half-updated weights). The first signal restores the previous handler, so
    a second one acts as it did before (KeyboardInterrupt, or the end of the process). Outside the main thread (where
    handlers cannot be installed) nothing changes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self._restore(signum)

    def _restore(self, signum: int) -> None:
        if signum in self._previous:
            previous = self._previous.pop(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def __enter__(self) -> "StopRequest":
        if _in_main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s in list(self._previous):
            self._restore(s)
