"""Peak memory and time of `eva predict` on a phone-sized pair (6000x4000 by default), in a fresh process.

    python bench/predict_memory.py [--run RUN_DIR] [--width 6000 --height 4000] [--shake] [--no-refine]

Without --run it trains a throw-away joint run on the embedded sample (64 px, 5 steps: the weights do not matter,
the model runs at its own size whatever the photo's). The pair is a smooth synthetic scene as JPEG with a red block
pasted in fg_bg (--shake: fg_bg also moved by 7 px and 5 % brighter, so registration and tone matching apply).
Both commands run from a temporary folder, so `PYTHONPATH=<another checkout>` times that checkout's code (`python -m`
would otherwise import the package from the current folder). `/usr/bin/time -v` reports the whole process's peak resident memory (imports, the model, the photos, the outputs).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_pair(folder: Path, w: int, h: int, shake: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(small).resize((w + 80, h + 80), Image.BILINEAR))
    bg = scene[40:40 + h, 40:40 + w]
    fg = scene[33:33 + h, 40:40 + w].copy() if shake else bg.copy()  # 7 px of shake
    if shake:
        fg = np.clip(fg.astype(np.float32) * 1.05, 0, 255).astype(np.uint8)
    fg[h // 3:h // 2, w // 3:w // 2] = (230, 40, 40)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(bg).save(folder / "bg.jpg", quality=92)
    Image.fromarray(fg).save(folder / "fg_bg.jpg", quality=92)
    return folder / "bg.jpg", folder / "fg_bg.jpg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a trained run folder (default: train a throw-away one)")
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--shake", action="store_true", help="fg_bg shaken and brighter: alignment applies")
    ap.add_argument("--no-refine", action="store_true", help="eva predict --no-refine: the mask resized, not refined")
    args = ap.parse_args()
    eva = [sys.executable, "-m", "eva_helpers.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run).resolve() if args.run else tmp / "run"
        if not args.run:
            data = tmp / "data"  # a copy: training writes the dataset's stats.json beside it
            shutil.copytree(ROOT / "eva_helpers" / "sample_data" / "sample-64", data)
            subprocess.run(eva + ["train", "--task", "joint", "--data", str(data), "--run-dir", str(run), "--epochs",
                                  "1", "--size", "64", "--max-steps", "5", "--workers", "0"], check=True,
                           capture_output=True, cwd=tmp)
        bg, fg = make_pair(tmp / "pair", args.width, args.height, args.shake)
        res = subprocess.run(["/usr/bin/time", "-v"] + eva + ["predict", "--run-dir", str(run), "--bg", str(bg),
                                                              "--fg-bg", str(fg), "--out", str(tmp / "out")]
                             + (["--no-refine"] if args.no_refine else []),
                             capture_output=True, text=True, cwd=tmp)
        if res.returncode:
            sys.exit(res.stderr[-2000:])
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", res.stderr).group(1)
        print(f"eva predict{' --no-refine' if args.no_refine else ''} on a {args.width}x{args.height} pair"
              f"{' (shaken)' if args.shake else ''}: "
              f"peak RSS {peak_kb / 1024 ** 2:.2f} GB, wall {wall}")
        print(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "")


if __name__ == "__main__":
    main()
