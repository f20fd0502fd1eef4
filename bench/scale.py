"""Scale: split + open time and memory at 100k and 400k samples, the record-based reader against the columnar index.

    nice -n 10 python bench/scale.py [--sizes 100k 400k] [--work DIR] [--keep] [--samples 8192]

Builds the embedded sample at 32 px with --positions 261 (100,224 samples) and 1042 (400,128 samples; about a minute
on 2 cores), then for each dataset runs, each in a fresh process: `make_splits(by="bg")` + `ShardDataset(train split)`
timed, the main process's RSS growth over that (the index's memory), then a DataLoader with 2 workers (the product's
`make_loader`, batch 64) timed over --samples samples, with each worker's peak RSS (VmHWM), its private memory (USS:
pages nobody shares) and the main process's peak RSS read from /proc. "old" is eva_helpers/dataset.py as it was at
commit da5ac18 (every index.jsonl parsed into dicts), loaded from git into a temp module; "new" is the package's.
Prints one JSON line per measurement and a markdown table. Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OLD_COMMIT = "da5ac18"  # last commit with the record-based reader
POSITIONS = {"100k": 261, "400k": 1042}


def old_dataset_module() -> types.ModuleType:
    """eva_helpers/dataset.py at OLD_COMMIT (the flat layout) as module eva_helpers._old_dataset; its relative imports
    resolve through the old-path aliases (moved.py)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:eva_helpers/dataset.py"], check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("eva_helpers._old_dataset")
    mod.__package__ = "eva_helpers"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{OLD_COMMIT}:eva_helpers/dataset.py", "exec"), mod.__dict__)
    return mod


def _status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS / VmHWM in MiB from /proc/<pid>/status, and USS (private clean + dirty) from smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    try:
        priv = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                priv += int(line.split()[1])
        out["USS"] = priv / 1024
    except OSError:
        pass
    return out


def measure(which: str, data: Path, samples: int, batch: int = 64) -> dict:
    """One measurement in this (fresh) process."""
    import gc

    import torch

    from eva_helpers.data.resize import resize_transform
    from eva_helpers.data.loaders import make_loader

    torch.set_num_threads(1)
    mod = old_dataset_module() if which == "old" else __import__("eva_helpers.data.dataset", fromlist=["x"])
    tf = resize_transform(32, compact=True)
    gc.collect()
    rss0 = _status()["VmRSS"]
    t0 = time.perf_counter()
    splits = mod.make_splits(str(data), by="bg", seed=0)
    t1 = time.perf_counter()
    ds = mod.ShardDataset(str(data), indices=splits["train"], transform=tf)
    t2 = time.perf_counter()
    del splits
    gc.collect()
    res = {"which": which, "samples_in_dataset": len(ds.records), "train": len(ds),
           "rss_before_open_mib": round(rss0, 1), "split_s": round(t1 - t0, 3),
           "open_s": round(t2 - t1, 3), "split_open_s": round(t2 - t0, 3),
           "index_mib_main": round(_status()["VmRSS"] - rss0, 1)}
    loader = make_loader(ds, batch, shuffle=True, num_workers=2, seed=0, drop_last=True)
    it = iter(loader)
    for _ in range(2):  # worker start-up, excluded
        next(it)
    pids = [w.pid for w in it._workers]
    seen, t0 = 0, time.perf_counter()
    while seen < samples:
        seen += len(next(it)["meta"])
    res["loader_samples_per_s"] = round(seen / (time.perf_counter() - t0), 1)
    for j, pid in enumerate(pids):
        st = _status(pid)
        res[f"worker{j}_peak_rss_mib"] = round(st["VmHWM"], 1)
        res[f"worker{j}_uss_mib"] = round(st.get("USS", float("nan")), 1)
    main = _status()
    res["main_peak_rss_mib"], res["main_uss_mib"] = round(main["VmHWM"], 1), round(main.get("USS", float("nan")), 1)
    del it, loader
    return res


def build(out: Path, positions: int) -> float:
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.paths import sample_assets

    t0 = time.perf_counter()
    build_dataset(sample_assets() / "bg", sample_assets() / "fg", out, size=32, positions=positions, seed=0,
                  shard_size=1000, progress=False)
    return time.perf_counter() - t0


def cold_costs(data: Path) -> dict:
    """What an older dataset (no index.npz) pays once: the index rebuilt from the shards, and hashing every file."""
    from eva_helpers.data import formats
    from eva_helpers.atomic import sha256_file
    from eva_helpers.data.verify import build_columns
    from eva_helpers.data.columns import index_bytes

    m = formats.read_manifest(data)
    t0 = time.perf_counter()
    cols = build_columns(data, m, None)
    index_bytes(cols, "x")
    t1 = time.perf_counter()
    for e in m["shards"] + [m["backgrounds"]]:
        sha256_file(data / e["file"])
    t2 = time.perf_counter()
    return {"rebuild_index_s": round(t1 - t0, 2), "hash_all_files_s": round(t2 - t1, 2),
            "index_npz_mib": round((data / "index.npz").stat().st_size / 2**20, 1),
            "dataset_mib": round(sum(e["bytes"] for e in m["shards"]) / 2**20, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["100k", "400k"], choices=sorted(POSITIONS))
    ap.add_argument("--work", type=Path, help="folder for the datasets (default: a temp folder, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the built datasets")
    ap.add_argument("--samples", type=int, default=8192, help="samples timed through the loader")
    ap.add_argument("--measure", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.data, args.samples)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="eva-scale-"))
    os.environ["EVA_CACHE"] = str(work / "cache")  # the build records its verified shards where the readers look
    env = dict(os.environ)
    rows = []
    try:
        for size in args.sizes:
            data = work / f"sample-32-{size}"
            built = None
            if not (data / "manifest.json").is_file() or not json.loads((data / "manifest.json").read_text()).get(
                    "complete"):
                built = round(build(data, POSITIONS[size]), 1)
            cold = cold_costs(data)
            for which in ("old", "new", "old", "new"):  # interleaved: drift on a shared machine hits both
                out = subprocess.run([sys.executable, __file__, "--measure", which, "--data", str(data),
                                      "--samples", str(args.samples)], check=True, capture_output=True, text=True,
                                     env=env).stdout
                r = {"dataset": size, "build_s": built, **cold, **json.loads(out.strip().splitlines()[-1])}
                print(json.dumps(r), flush=True)
                rows.append(r)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    keys = ["split_open_s", "index_mib_main", "rss_before_open_mib", "main_peak_rss_mib", "worker0_peak_rss_mib",
            "worker1_peak_rss_mib",
            "worker0_uss_mib", "worker1_uss_mib", "loader_samples_per_s"]
    print("\n| dataset | reader | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (len(keys) + 2))
    for r in rows:
        print(f"| {r['dataset']} ({r['samples_in_dataset']}) | {r['which']} | " + " | ".join(str(r[k]) for k in keys)
              + " |")


if __name__ == "__main__":
    main()
