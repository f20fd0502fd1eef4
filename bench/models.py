"""Model benchmark: parameters, FLOPs per image, training throughput for every registry entry (mask-only and joint).

    python bench/models.py                      # CPU: fwd+bwd img/s at 64 px, batch 8
    python bench/models.py --device cuda        # GPU: img/s at 224 px, fp32 vs AMP + channels_last

FLOPs come from torch.utils.flop_counter.FlopCounterMode (1 multiply-add = 2 FLOPs; convolutions and matmuls only,
which dominate these nets), one image at --flops-size. Throughput is batch / median step time. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eva_helpers.training.losses import build_criterion  # noqa: E402
from eva_helpers.models import build_model, count_parameters, list_models  # noqa: E402

TASK_SETS = {"mask": ("mask",), "joint": ("mask", "depth")}


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 9, size, size))
    model.train()
    return float(counter.get_total_flops())


def train_throughput(model, tasks, device: str, size: int, batch: int, iters: int, warmup: int,
                     amp: bool = False, channels_last: bool = False) -> float:
    """Images per second (batch / median step time) for forward + loss + backward + SGD step on random data."""
    model = model.to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    crit = build_criterion(tasks)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 9, size, size, device=device).to(memory_format=fmt)  # prepare_batch layout
    targets = {"mask": (torch.rand(batch, 1, size, size, device=device) > 0.9).float(),
               "depth": torch.rand(batch, 1, size, size, device=device)}
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=amp):
            loss, _ = crit(model(x), targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):  # per-step times, median: robust to a shared machine's preemption spikes
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=None, help="training size (default 64 on CPU, 224 on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 32 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 3 on CPU, 20 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--flops-size", type=int, default=224)
    ap.add_argument("--models", nargs="*", default=None, help=f"subset of {list_models()}")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args(argv)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    size, batch = a.size or (224 if cuda else 64), a.batch or (32 if cuda else 8)
    iters, warmup = a.iters or (20 if cuda else 3), a.warmup if a.warmup is not None else (5 if cuda else 1)
    if a.threads:
        torch.set_num_threads(a.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    dev = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# models benchmark: {dev}, torch {torch.__version__}, train size {size}, batch {batch}, "
          f"{iters} timed iters after {warmup} warm-up\n")
    speed_cols = ["fp32 img/s", "AMP+channels_last img/s"] if cuda else ["fwd+bwd img/s"]
    print(f"| model | tasks | params (M) | GFLOPs/img @{a.flops_size} | " + " | ".join(speed_cols) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(speed_cols))
    for name in a.models or list_models():
        for label, tasks in TASK_SETS.items():
            torch.manual_seed(0)
            model = build_model(name, tasks=tasks)
            params = count_parameters(model) / 1e6
            gflops = flops_per_image(model, a.flops_size) / 1e9
            if cuda:
                speeds = [train_throughput(model, tasks, "cuda", size, batch, iters, warmup),
                          train_throughput(model, tasks, "cuda", size, batch, iters, warmup, amp=True,
                                           channels_last=True)]
            else:
                speeds = [train_throughput(model, tasks, "cpu", size, batch, iters, warmup)]
            print(f"| {name} | {label} | {params:.2f} | {gflops:.2f} | " + " | ".join(f"{s:.1f}" for s in speeds) + " |",
                  flush=True)
            del model
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
