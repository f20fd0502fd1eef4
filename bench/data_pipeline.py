"""Data pipeline throughput: the training loader (ShardDataset + make_loader) vs a seed-style folder/PIL loader.

    python bench/data_pipeline.py [--data DIR] [--size 224] [--workers 2] [--batch 64] [--samples 4096] [--prepare]
                                  [--verify-rounds 2]

"ours" is what `fit` runs: workers only read and decode fg_bg, mask and depth (augmentation runs on the batch, on the
GPU in training, `batch_augment.py`; each sample's background comes from `loaders.BackgroundBank` by its bg_id). The
comparison with the earlier pipeline, where each worker also ran per-sample albumentations, ran with
`--worker-augment-rounds` up to commit 28b7d88 (bench/RESULTS.md); that pipeline is gone since.

Both loaders run in the same process on the same dataset (built from the embedded sample at --size unless --data is
given), with the same workers and batch size; the first batches (worker start-up) are excluded from the timing.
Besides samples/s (which depends on whatever else runs on the machine), it reports CPU ms per sample summed over the
main process and the workers: on an otherwise idle 2-vCPU machine the rate is about 2000 / cpu_ms.
"ours" includes the batch preparation (batch_to_device, augmentation, model_input) on CPU only with --prepare. Prints one JSON line; peak RSS is ru_maxrss of this process
and of its (finished) worker processes.
Verified reads: the same loader over `ShardDataset(verify=True)` (the default: CRC of every member against the index,
decoded shapes checked) and `verify=False`, alternated --verify-rounds times after the dataset's first (hashing) open,
so drift on a shared machine hits both; `verify_cost` = 1 - on/off of the summed rates, `verify_cost_cpu` the extra
CPU time per sample (best round of each; it does not depend on other load on the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_data(out: Path, size: int, positions: int) -> Path:
    try:
        from eva_helpers.compositing.build import build_dataset
        from eva_helpers.paths import sample_assets

        build_dataset(sample_assets() / "bg", sample_assets() / "fg", out, size=size, positions=positions, seed=0,
                      shard_size=512, progress=False)
        return out
    except ImportError:  # the builder is not there yet: the synthetic writer of the tests
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from _synthetic import write_synthetic_dataset

        return write_synthetic_dataset(out, n_bg=12, n_fg=4, positions=32, size=size, shard_size=512)


class SeedStyle(torch.utils.data.Dataset):
    """What the peers did: files in folders, PIL open per file, a separate torchvision pipeline per target."""

    def __init__(self, folder: Path, records: list[dict], size: int):
        import torchvision.transforms as T

        self.folder, self.records = folder, records
        self.img_tf = T.Compose([T.Resize((size, size)), T.ColorJitter(0.3, 0.3, 0.3, 0.03), T.ToTensor(),
                                 T.Normalize([0.5] * 3, [0.25] * 3)])
        self.mask_tf = T.Compose([T.Resize((size, size)), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from PIL import Image

        r = self.records[i]
        f = self.folder
        bg = Image.open(f / "bg" / f"{r['bg_id']}.png").convert("RGB")
        fg_bg = Image.open(f / "fg_bg" / f"{r['id']}.jpg").convert("RGB")
        mask = Image.open(f / "mask" / f"{r['id']}.png").convert("L")
        depth = Image.open(f / "depth" / f"{r['id']}.png")
        depth = torch.from_numpy(np.asarray(depth, dtype=np.float32) / 65535.0)[None]
        return (self.img_tf(bg), self.img_tf(fg_bg), self.mask_tf(mask),
                torch.nn.functional.interpolate(depth[None], size=self.img_tf.transforms[0].size)[0])


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of this process and the given worker processes (Linux /proc)."""
    t = time.process_time()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            t += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return t


def time_loader(loader, samples: int, warmup: int = 2, prepare=None) -> tuple[float, float]:
    """(samples/s, CPU ms per sample over main + workers) for `samples` samples after `warmup` batches.

    The CPU figure does not depend on other load on the machine: 2000 / cpu_ms is the rate two idle cores allow.
    """
    seen, t0, c0, batches = 0, None, 0.0, 0
    pids: list[int] = []
    while True:
        for batch in loader:
            batches += 1
            if prepare is not None:
                prepare(batch)
            if batches == warmup:
                it = getattr(loader, "_iterator", None)
                pids = [w.pid for w in getattr(it, "_workers", [])]
                t0, c0 = time.perf_counter(), _cpu_s(pids)
                continue
            if t0 is not None:
                seen += len(batch["meta"]) if isinstance(batch, dict) else len(batch[0])
                if seen >= samples:
                    return seen / (time.perf_counter() - t0), 1e3 * (_cpu_s(pids) - c0) / seen


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--prepare", action="store_true",
                    help="include the batch preparation on the CPU, with the default batch augmentation, in our loader's time")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--verify-rounds", type=int, default=2, help="on/off alternations for the verified-read cost")
    args = ap.parse_args(argv)

    from eva_helpers.data.resize import resize_transform
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.data.extract import extract_dataset
    from eva_helpers.data.loaders import batch_to_device, make_loader
    from eva_helpers.models.inputs import model_input

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="eva-bench-"))
    data = args.data or build_data(tmp / "data", args.size, args.positions)
    from eva_helpers.training.batch_augment import BatchAugment
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.data.loaders import BackgroundBank

    decode_only = resize_transform(args.size, compact=True, with_bg=False)  # what train.build_data gives them
    ds = ShardDataset(data, transform=decode_only)
    res = {"samples_in_dataset": len(ds), "size": args.size, "workers": args.workers, "batch": args.batch,
           "cpus": os.cpu_count(), "prepare_batch_included": args.prepare}
    loader = make_loader(ds, args.batch, shuffle=True, num_workers=args.workers, seed=0, drop_last=True)
    aug = BatchAugment.from_config(TrainConfig())
    steps = iter(range(10**9))
    bank = BackgroundBank(ds, args.size)

    def prepare(b):  # the training loop's step before the model: onto the device, augmented, the model's input
        bg, fg_bg, targets = batch_to_device(b, "cpu", bank)
        bg, fg_bg, targets = aug(bg, fg_bg, targets, aug.generator(0, next(steps), 0, torch.device("cpu")))
        return model_input(bg, fg_bg)

    prep = prepare if args.prepare else None
    rate, cpu = time_loader(loader, args.samples, prepare=prep)
    res["ours_samples_per_s"], res["ours_cpu_ms_per_sample"] = round(rate, 1), round(cpu, 3)
    del loader
    if args.verify_rounds > 0:
        rates, cpus = {True: [], False: []}, {True: [], False: []}
        for r in range(args.verify_rounds):
            for verify in ((False, True) if r % 2 == 0 else (True, False)):  # ABBA: order effects cancel
                vds = ShardDataset(data, transform=decode_only, verify=verify)
                vl = make_loader(vds, args.batch, shuffle=True, num_workers=args.workers, seed=0, drop_last=True)
                rate, cpu = time_loader(vl, args.samples, prepare=prep)
                rates[verify].append(rate)
                cpus[verify].append(cpu)
                del vl
        res["verify_on_samples_per_s"] = [round(r, 1) for r in rates[True]]
        res["verify_off_samples_per_s"] = [round(r, 1) for r in rates[False]]
        res["verify_on_cpu_ms_per_sample"] = [round(c, 3) for c in cpus[True]]
        res["verify_off_cpu_ms_per_sample"] = [round(c, 3) for c in cpus[False]]
        res["verify_cost"] = round(1 - sum(rates[True]) / sum(rates[False]), 4)  # wall clock: noisy when shared
        res["verify_cost_cpu"] = round(min(cpus[True]) / min(cpus[False]) - 1, 4)  # best of rounds, CPU time
    if not args.skip_seed:
        folder = extract_dataset(data, tmp / "extracted", progress=False)
        seed_ds = SeedStyle(folder, ShardDataset(data).records, args.size)
        seed_loader = torch.utils.data.DataLoader(seed_ds, batch_size=args.batch, shuffle=True,
                                                  num_workers=args.workers, drop_last=True,
                                                  persistent_workers=args.workers > 0)
        rate, cpu = time_loader(seed_loader, args.samples)
        res["seed_style_samples_per_s"], res["seed_style_cpu_ms_per_sample"] = round(rate, 1), round(cpu, 3)
        res["speedup"] = round(res["ours_samples_per_s"] / res["seed_style_samples_per_s"], 2)
        res["cpu_speedup"] = round(res["seed_style_cpu_ms_per_sample"] / res["ours_cpu_ms_per_sample"], 2)
        del seed_loader
    import gc

    gc.collect()
    time.sleep(0.5)  # let the persistent workers exit so RUSAGE_CHILDREN counts them
    kib = 1024 if sys.platform != "darwin" else 1
    res["peak_rss_mib_main"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**20, 1)
    res["peak_rss_mib_children"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 2**20, 1)
    print(json.dumps(res))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
