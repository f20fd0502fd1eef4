"""`eva predict` on a large pair holds about one full-size float map at a time: the model runs at its own size, the
figure is drawn from thumbnails, the outputs are written without whole-image float64 copies. Measured in a fresh
process as the growth of peak RSS over a warmed-up process (imports and the run loaded), per pixel of the pair."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a fresh process predicting a large pair: seconds

SCRIPT = r"""
import json, sys
from pathlib import Path
from eva_helpers.predict.pair import predict_one

def status(key):
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":"))
    return int(line.split()[1])  # kB

run, small, big, out = (Path(a) for a in sys.argv[1:5])
predict_one(run, small / "bg.png", small / "fg.png", out / "warm")  # lazy imports, the run read once
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
before = status("VmRSS")
predict_one(run, big / "bg.jpg", big / "fg.jpg", out / "big")
print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM")}))
"""


def _pair(folder: Path, w: int, h: int, ext: str) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bg = np.asarray(Image.fromarray(rng.integers(0, 255, (h // 40 + 1, w // 40 + 1, 3), dtype=np.uint8))
                    .resize((w, h), Image.BILINEAR))
    fg = bg.copy()
    fg[h // 3:h // 2, w // 3:w // 2] = (230, 40, 40)
    Image.fromarray(bg).save(folder / f"bg.{ext}")
    Image.fromarray(fg).save(folder / f"fg.{ext}")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_peak_memory_of_a_large_pair_is_a_few_bytes_per_pixel(tmp_path, trained_run):
    w, h = 3000, 2000
    _pair(tmp_path / "small", 64, 48, "png")
    _pair(tmp_path / "big", w, h, "jpg")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(trained_run), str(tmp_path / "small"),
                          str(tmp_path / "big"), str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rss = json.loads(res.stdout.strip().splitlines()[-1])
    grown = (rss["peak_kb"] - rss["before_kb"]) * 1024 / (w * h)
    # two uint8 photos (6 B/px), their aligned/resized copies and one float32 map (4 B/px) with its uint8 result:
    # 14 B/px measured; the previous code held full-size float64 and matplotlib copies (80 B/px)
    assert grown < 35, f"peak RSS grew by {grown:.1f} bytes per pixel"
    assert (tmp_path / "out" / "big" / "depth.png").is_file() and (tmp_path / "out" / "big" / "mask.png").is_file()
