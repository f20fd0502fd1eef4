"""Which package modules one user step passes through: every eva_helpers module with a function that ran during it
(a call trace; importing a module without calling it does not count).

    python tools/module_trace.py                        # this checkout's code
    PYTHONPATH=/path/to/other/checkout python tools/module_trace.py   # another version, to compare

The steps: a notebook's training cell (`colab.notebook_train.train`, one epoch on a small build of the embedded sample)
and `eva predict` on one pair from that build, with the run it trained. Prints one JSON line: the count and the modules
of each step. The build and the training before `eva predict` are not traced.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path


def traced(fn) -> list[str]:
    """Run `fn()` and return the eva_helpers modules whose functions it called."""
    import eva_helpers

    root = Path(eva_helpers.__file__).resolve().parent
    seen: set[str] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name != "<module>":
            seen.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    mods = set()
    for f in seen:
        p = Path(f).resolve()
        if root in p.parents:
            rel = p.relative_to(root.parent).with_suffix("")
            mods.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return sorted(mods)


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    import eva_helpers
    from eva_helpers.cli import main as eva
    from eva_helpers.colab import notebook_train as nt
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.paths import sample_assets
    from eva_helpers.training.config import TrainConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="eva-trace-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        build_dataset(sample_assets() / "bg", sample_assets() / "fg", data, size=32, positions=1, seed=0, limit=96,
                      shard_size=48, workers=1, progress=False)
        eva(["stats", "--data", str(data)])
        cfg = TrainConfig(task="joint", data=str(data), run_dir=str(tmp / "run"), model="unet_small", epochs=1,
                          batch_size=16, size=32, workers=0, progress=False, live_plot=False, tensorboard=False)
        train = traced(lambda: nt.train(cfg))
        s = ShardDataset(data).load(0)
        for k in ("bg", "fg_bg"):
            Image.fromarray(np.asarray(s[k])).save(tmp / f"{k}.png")
        predict = traced(lambda: eva(["predict", "--run-dir", str(tmp / "run"), "--bg", str(tmp / "bg.png"),
                                      "--fg-bg", str(tmp / "fg_bg.png"), "--out", str(tmp / "pred")]))
    print(json.dumps({"package": eva_helpers.__file__, "train_cell": {"modules": len(train), "names": train},
                      "eva_predict": {"modules": len(predict), "names": predict}}))


if __name__ == "__main__":
    main()
