"""Test helpers for the training tests: a tiny dict dataset, a tiny two-head model, a simple criterion, and a CLI
(`python tests/_tiny.py --run-dir DIR ...`) that runs `fit` on them, for kill/resume and torchrun tests."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class TinyDataset(torch.utils.data.Dataset):
    """`ds[i]` or `ds[(i, seed)]` -> the ShardDataset dict shape; with a seed, a seeded random "augmentation"
    (flip + noise) so that the per-sample seed visibly matters. `calls` counts decodes (in this process)."""

    def __init__(self, n: int = 24, size: int = 16, delay_s: float = 0.0, gate: str | None = None) -> None:
        self.n, self.size, self.delay_s, self.gate = n, size, delay_s, gate  # `gate`.reached: the first wait began
        self.calls: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        self.calls.append(i)
        if self.delay_s:
            time.sleep(self.delay_s)  # stands in for JPEG decoding, so a kill lands mid-epoch
        if self.gate and os.path.exists(self.gate):  # held mid-run for as long as a test needs
            Path(self.gate + ".reached").touch()
            while os.path.exists(self.gate):
                time.sleep(0.02)
        g = torch.Generator().manual_seed(1000 + i)
        s = self.size
        bg = torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8)
        mask = torch.zeros(1, s, s)
        y, x, h = [int(v) for v in torch.randint(0, s // 2, (3,), generator=g)]
        mask[:, y:y + h + 2, x:x + h + 2] = 1.0
        fg_bg = torch.where(mask.bool(), torch.full_like(bg, 200), bg)
        depth = torch.linspace(0, 1, s).view(1, s, 1).expand(1, s, s).clone() * 0.5 + 0.5 * mask
        if seed is not None:  # the "augmentation": a pure function of (sample, seed)
            a = torch.Generator().manual_seed(seed)
            if torch.rand((), generator=a) < 0.5:
                bg, fg_bg, mask, depth = (t.flip(-1) for t in (bg, fg_bg, mask, depth))
            noise = torch.randint(-8, 9, (3, s, s), generator=a)
            fg_bg = (fg_bg.int() + noise).clamp(0, 255).to(torch.uint8)
        return {"bg": bg, "fg_bg": fg_bg, "mask": mask, "depth": depth, "meta": {"index": i, "seed": seed}}


class TinyNet(nn.Module):
    """cat(bg, fg_bg, |diff|) (the first 9 channels of model_input's 10) -> width -> {"mask": logits, "depth": sigmoid} (B,1,H,W); BatchNorm and dropout (RNG)."""

    def __init__(self, name: str = "tiny", tasks=("mask", "depth"), width: int = 8) -> None:
        super().__init__()
        self.model_args = {"name": name, "tasks": list(tasks), "width": width}
        self.body = nn.Sequential(nn.Conv2d(9, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Dropout2d(0.2),  # draws from torch's global RNG: resume must restore it
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Conv2d(width, 1, 1) for t in tasks})

    def forward(self, x):
        f = self.body(x[:, :9])
        out = {t: h(f) for t, h in self.heads.items()}
        if "depth" in out:
            out["depth"] = torch.sigmoid(out["depth"])
        return out


class TinyCriterion(nn.Module):
    """BCE on mask logits + L1 on depth, weighted by learned log-variances (so the criterion has state to save)."""

    def __init__(self, tasks=("mask", "depth")) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, outputs, targets):
        parts = {}
        if "mask" in self.tasks:
            parts["mask"] = nn.functional.binary_cross_entropy_with_logits(outputs["mask"].float(), targets["mask"])
        if "depth" in self.tasks:
            parts["depth"] = (outputs["depth"].float() - targets["depth"]).abs().mean()
        loss = sum(torch.exp(-lv) * parts[t] + lv for lv, t in zip(self.log_vars, self.tasks))
        return loss, {k: v.detach() for k, v in parts.items()}


def tiny_config(run_dir, **kw):
    from eva_helpers.training.config import TrainConfig

    base = dict(task="joint", run_dir=str(run_dir), model="tiny", epochs=3, batch_size=4, size=16, lr=1e-2,
                seed=7, workers=0, amp=False, channels_last=False, checkpoint_interval_s=0.05, keep_last=2,
                deterministic=True, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def run_tiny(run_dir, *, n: int = 24, val: int = 8, delay_s: float = 0.0, gate: str | None = None,
             val_gate: str | None = None, **kw) -> dict:
    from eva_helpers.training.trainer import fit

    torch.set_num_threads(1)
    cfg = tiny_config(run_dir, **kw)
    torch.manual_seed(cfg.seed)  # fit seeds too; injected objects are built here, so seed them the same way
    model, crit = TinyNet(tasks=cfg.tasks), TinyCriterion(cfg.tasks)
    return fit(cfg, model=model, train_set=TinyDataset(n, cfg.size, delay_s, gate),
               val_set=TinyDataset(val, cfg.size, gate=val_gate), criterion=crit)


def main(argv=None) -> None:
    import _faults

    _faults.install()  # EVA_CKPT_FAULT: killed mid-save, for the resume tests
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--gate", default=None, help="training samples wait while this file exists")
    p.add_argument("--val-gate", default=None, help="validation samples wait while this file exists")
    p.add_argument("--stale", type=float, default=None, help="lease.STALE_S for this process")
    p.add_argument("--heartbeat", type=float, default=None, help="lease.HEARTBEAT_S for this process")
    a = p.parse_args(argv)
    from eva_helpers import lease
    from eva_helpers.errors import EvaError

    lease.STALE_S = lease.STALE_S if a.stale is None else a.stale
    lease.HEARTBEAT_S = lease.HEARTBEAT_S if a.heartbeat is None else a.heartbeat
    _say(f"START {os.getpid()}")
    try:
        s = run_tiny(a.run_dir, n=a.samples, delay_s=a.delay, workers=a.workers, epochs=a.epochs,
                     checkpoint_interval_s=a.interval, max_steps=a.max_steps, gate=a.gate, val_gate=a.val_gate)
    except EvaError as e:  # as the eva command does: one line, exit code 2
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    _say(f"DONE {s['global_step']} {s['finished']}")
    if os.environ.get("WORLD_SIZE"):  # under torchrun: everything is saved and the process group destroyed; skip the
        os._exit(0)  # interpreter teardown, where gloo's threads rarely abort ("terminate called", seen once in CI)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: lines from several torchrun ranks do not interleave
    sys.stdout.flush()


if __name__ == "__main__":
    main()
