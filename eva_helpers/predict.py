"""`eva predict`: a trained run applied to any pair of photos, any size (resized in, resized back out)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import BadInputError
from .images import read_image


def load_photo(path: str | Path) -> np.ndarray:
    """Any photo (JPEG/PNG/WebP, any mode or bit depth) -> (H, W, 3) uint8 RGB, read exactly as `eva build` reads a
    background (`images.read_image`: one reader for both); a clear one-line error naming the file."""
    return read_image(path)


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    w, h = size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w < img.shape[1]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


@torch.no_grad()
def predict_pair(model, bg: np.ndarray, fg_bg: np.ndarray, size: int, stats: dict | None = None,
                 device: str | torch.device = "cpu", calib: dict | None = None) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 bg and fg_bg -> {"mask": (H, W) uint8 0/255, "depth": (H, W) float32 [0, 1]} at the input size.

    `calib` is the run's mask post-processing chosen on validation (calibrate.load_calibration); None = a 0.5 cut.
    """
    from .loaders import prepare_batch

    if bg.shape != fg_bg.shape:
        raise BadInputError(f"bg is {bg.shape[1]}x{bg.shape[0]} but fg_bg is {fg_bg.shape[1]}x{fg_bg.shape[0]}: "
                            "they must be the same photo, same size")
    h, w = bg.shape[:2]
    ims = [torch.from_numpy(np.array(_resize(a, (size, size)))).permute(2, 0, 1)[None] for a in (bg, fg_bg)]  # a copy: inputs may be read-only
    zeros = torch.zeros(1, 1, size, size)
    batch = {"bg": ims[0], "fg_bg": ims[1], "mask": zeros, "depth": zeros, "meta": [{}]}
    model.eval()
    x, _ = prepare_batch(batch, torch.device(device), stats)
    out = model(x)
    result: dict[str, np.ndarray] = {}
    if "mask" in out:
        calib = calib or {"threshold": 0.5, "morph": False}
        if calib["morph"]:  # open/close at the model's size (as chosen), then nearest back to the photo's size
            from .calibrate import postprocess

            m = postprocess(out["mask"], calib["threshold"], True)[0, 0].cpu().numpy().astype(np.uint8)
            result["mask"] = _resize(m, (w, h), nearest=True) * 255
        else:
            prob = out["mask"].float().sigmoid()[0, 0].cpu().numpy()
            result["mask"] = (_resize(prob, (w, h)) > calib["threshold"]).astype(np.uint8) * 255
    if "depth" in out:
        result["depth"] = np.clip(_resize(out["depth"].float()[0, 0].cpu().numpy(), (w, h)), 0, 1).astype(np.float32)
    return result


def predict_files(run_dir: str | Path, bg_path: str | Path, fg_bg_path: str | Path, out_dir: str | Path,
                  which: str = "best", device: str | None = None) -> list[Path]:
    """Write mask.png (8-bit), depth.png (16-bit, near = bright) and prediction.png (side by side) into out_dir."""
    from .atomic import atomic_write_bytes
    from .evaluate import load_run_stats
    from .formats import encode_depth, encode_mask
    from .plots import save_figure, side_by_side
    from .train import load_run

    bg, fg_bg = load_photo(bg_path), load_photo(fg_bg_path)
    if bg.shape != fg_bg.shape:
        raise BadInputError(f"{bg_path} is {bg.shape[1]}x{bg.shape[0]} but {fg_bg_path} is "
                            f"{fg_bg.shape[1]}x{fg_bg.shape[0]}: they must be the same photo, same size")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, _ = load_run(run_dir, which=which, device=str(dev))
    stats = load_run_stats(Path(run_dir), Path(cfg.data))
    from .calibrate import load_calibration

    pred = predict_pair(model, bg, fg_bg, cfg.size, stats, dev, calib=load_calibration(run_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "mask" in pred:
        atomic_write_bytes(out / "mask.png", encode_mask(pred["mask"]))
        written.append(out / "mask.png")
    if "depth" in pred:
        atomic_write_bytes(out / "depth.png", encode_depth(pred["depth"]))
        written.append(out / "depth.png")
    fig = side_by_side(bg, fg_bg, pred.get("mask"), pred.get("depth"), title=f"{Path(run_dir).name} ({cfg.model})")
    written.append(save_figure(fig, out / "prediction.png"))
    return written
