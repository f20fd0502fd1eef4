"""Kill this process at a named stage of its n-th checkpoint save, to prove that a kill anywhere leaves the run folder
whole: `EVA_CKPT_FAULT="<stage>:<n>"` in a child process's environment, and `install()` there. The hooks wrap
CheckpointManager's steps from outside, so the package carries no test switch.

Stages, in a save's order: local (serialised on local disk), copy (half of last.pt's bytes copied into the run folder),
last (the copy whole, before last.pt is replaced), rotate (prev's sidecar written, before last.pt becomes prev.pt),
last-renamed (last.pt in place, its sidecar not yet), best (half of best.pt's bytes), best-renamed (best.pt in place,
its sidecar not yet).
"""
from __future__ import annotations

import os
import shutil
import signal

FAULT_ENV = "EVA_CKPT_FAULT"


def install(spec: str | None = None) -> None:
    spec = os.environ.get(FAULT_ENV) if spec is None else spec
    if not spec:
        return
    from eva_helpers.atomic import atomic_open
    from eva_helpers.training import checkpoint as ck

    want, _, nth = spec.partition(":")
    counts: dict[str, int] = {}

    def at(stage: str) -> None:
        if stage == want:
            counts[stage] = counts.get(stage, 0) + 1
            if counts[stage] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    serialise, sidecar, replace = ck._serialise, ck.CheckpointManager._sidecar, ck.CheckpointManager._replace

    def copy_in(src, dst, before_replace=None):  # ck._copy_in, with a stop halfway through the bytes
        whole = before_replace
        if whole is not None:
            def before_replace():
                at("last")
                whole()
        size = src.stat().st_size
        with open(src, "rb") as fin, atomic_open(dst, "wb", before_replace=before_replace) as fout:
            fout.write(fin.read(size // 2))
            fout.flush()
            at("copy" if dst.name == ck.LAST else "best")
            shutil.copyfileobj(fin, fout, 1 << 22)

    ck._serialise = lambda state, local: (serialise(state, local), at("local"))[0]
    ck._copy_in = copy_in
    ck.CheckpointManager._replace = lambda self, src, target: (at("rotate") if target == ck.PREV else None,
                                                               replace(self, src, target))[1]
    ck.CheckpointManager._sidecar = lambda self, target, meta: (
        at({ck.LAST: "last-renamed", ck.BEST: "best-renamed"}.get(target, "")), sidecar(self, target, meta))[1]
