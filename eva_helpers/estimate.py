"""What a long step will cost, said before it starts, in the words every estimate uses; and the copy of a Drive dataset
to the local cache (bytes and minutes).

Every number is an estimate and says so. The stages own their own probes: a build's bytes and minutes
(`compositing/cost.py`), a training or evaluation step timed on this runtime (`training/cost.py`). The Drive read rate
is not measured here: the copy's time is given as a range.
"""
from __future__ import annotations

DRIVE_READ_MB_S = (30, 100)  # assumed range for large files read through the Drive mount (not measured here)


def gb_text(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def duration_text(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{max(s, 1):.0f} s"


def estimate_copy(n_bytes: float, n_files: int) -> tuple[float, float]:
    """(fastest, slowest) seconds to copy `n_bytes` from Drive to local disk, printed (the rate is assumed)."""
    lo, hi = (n_bytes / (r * 1e6) for r in reversed(DRIVE_READ_MB_S))
    print(f"estimate: copying {gb_text(n_bytes)} in {n_files} files from Drive to the local disk takes about "
          f"{duration_text(lo)}-{duration_text(hi)} (Drive's read rate varies; files already copied and verified are skipped)")
    return lo, hi
