"""`eva predict`: a trained run applied to a user's photos, any size: one pair, or the folders of a whole shoot.

One code path for one pair and for many, so a folder's masks are byte-identical to the single-pair command's:
read (`images.read_image`, the build's decoder) -> register, tone-match and (after a much coarser fg_bg JPEG)
re-compress bg like fg_bg at full resolution (`align.align_pair`, only when confident; it says what it did) -> resize
both to the model's size -> the model on that pair alone -> the run's calibrated threshold -> back to the photo's size,
where a photo at least 1.5x the model gets its mask's outline from its own pixels (refine.py; `refine=False` or
`--no-refine` for the model's answer resized). A bg of another size but the same aspect is first resized to fg_bg's.

The model sees one pair at a time even in folder mode. Batched convolutions choose their kernels and reduction order
by shape: on CPU (oneDNN and the native path alike) unet_small's outputs for a pair moved by up to 2.4e-7 between a
batch of one and a batch of 16, enough to flip a thresholded mask pixel. Folder mode batches what costs time around
the model instead: the model is loaded once, and whole pairs (read, align, model, write) run side by side in a pool
of threads. Per-pair forwards cost ~8 % against batched ones at 64 px on 2 CPU cores.

The thread count changes float sums too (1 vs 2 intra-op threads: 6e-8), so every prediction on CPU runs with one
torch thread and one OpenCV thread (`single_threaded`), in both commands; folder mode gets its parallelism from the
pool instead, which also avoids oversubscribing a shared 2-core machine (2 intra-op threads beside a busy neighbour
took 130-170 ms per 64 px forward instead of 15 ms).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from eva_helpers.atomic import atomic_write_bytes, atomic_write_json
from eva_helpers.data.formats import DEPTH_MAX, encode_depth16, encode_mask
from eva_helpers.data.images import check_opaque, check_same_kind, read_image
from eva_helpers.errors import BadInputError
from eva_helpers.models.inputs import model_input
from eva_helpers.plots import save_figure, side_by_side
from eva_helpers.predict.align import (
    IDENTITY,
    SAME_ASPECT,
    Alignment,
    align_pair,
    alignment_record,
    could_not_align,
    to_common_size,
)
from eva_helpers.predict.masks import postprocess
from eva_helpers.predict.refine import REFINE_MIN_SCALE, refine_mask
from eva_helpers.training.trained_run import load_trained_run

NO_ALIGN_REASON = "turned off (--no-align)"


def load_photo(path: str | Path) -> np.ndarray:
    """Any photo (JPEG/PNG/WebP, HEIC with pillow-heif, any mode or bit depth) -> (H, W, 3) uint8 RGB, read exactly as
    `eva build` reads a background (`images.read_image`: one reader for both); a clear one-line error naming the file."""
    return read_image(path)


def check_pair_files(bg: str | Path, fg_bg: str | Path) -> None:
    """The checks on a pair's files beside decoding: neither has transparent pixels, and both are stored the same way
    (colour or greyscale); each a one-line refusal naming the file."""
    check_opaque(bg, "bg")
    check_opaque(fg_bg, "fg_bg")
    check_same_kind(bg, fg_bg)


def check_two_inputs(bg: str | Path, fg_bg: str | Path, what: str = "file") -> None:
    """--bg and --fg-bg naming one file or folder (by any path: `./x`, a symlink, a hard link) would compare a photo
    with itself and give empty masks: a one-line refusal naming both."""
    a, b = Path(bg), Path(fg_bg)
    same = a.resolve() == b.resolve()
    if not same:
        try:
            same = os.path.samefile(a, b)
        except OSError:
            same = False
    if same:
        raise BadInputError(f"--bg {bg} and --fg-bg {fg_bg} are the same {what}: give the background without the "
                            "object as --bg and the shot with the object as --fg-bg")


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    w, h = size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w < img.shape[1]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


# ---------------------------------------------------------------- one pair: the stages both commands share

@dataclass
class Prepared:
    """A pair ready for the model: both photos at the model's size (bg aligned first), and what to undo after."""
    bg: np.ndarray  # (size, size, 3) uint8
    fg_bg: np.ndarray  # (size, size, 3) uint8
    alignment: "Alignment"
    shape: tuple[int, int]  # (H, W) of the photos: the outputs' size
    full: tuple[np.ndarray, np.ndarray] | None = None  # (bg aligned, fg_bg) at the photo's size, for refine.py
    resized: str | None = None  # what one_frame did to bg, if anything


def one_frame(bg: np.ndarray, fg_bg: np.ndarray, bg_name: object = "bg",
              fg_name: object = "fg_bg") -> tuple[np.ndarray, np.ndarray, str | None]:
    """bg brought to fg_bg's size when the two are one frame at two sizes (a chat app's copy of a phone photo: same
    aspect), with a note saying so; other aspects are a one-line error naming both files."""
    try:
        return to_common_size(bg, fg_bg)
    except BadInputError:
        raise BadInputError(size_mismatch(bg.shape, fg_bg.shape, bg_name, fg_name)) from None


ROTATED = ("one of them may be rotated (its EXIF orientation lost, e.g. by an editor or a chat app): turn it upright, "
           "save it again and give the same photo, same size")


def looks_rotated(a_shape: tuple, b_shape: tuple) -> bool:
    """Whether one photo's frame is the other's turned by 90 degrees (WxH beside HxW, at any scale): one of the two
    lost its EXIF orientation. A square frame says nothing."""
    (ha, wa), (hb, wb) = a_shape[:2], b_shape[:2]
    return min(ha, wa, hb, wb) >= 1 and ha != wa and abs((wa / ha) / (hb / wb) - 1.0) <= SAME_ASPECT


def size_mismatch(bg_shape: tuple, fg_shape: tuple, bg_name: object = "bg", fg_name: object = "fg_bg") -> str:
    """One line on two photos that are not one frame, saying so when one may be rotated (`looks_rotated`)."""
    line = f"{bg_name} is {bg_shape[1]}x{bg_shape[0]} but {fg_name} is {fg_shape[1]}x{fg_shape[0]}: "
    if looks_rotated(bg_shape, fg_shape):
        return line + ROTATED
    return line + "other aspect ratios, so not one frame; give the same photo, same size (or a resized copy of it)"


def not_aligned(reason: str = NO_ALIGN_REASON) -> "Alignment":
    """The identity alignment, saying why nothing was applied."""
    return replace(IDENTITY, reason=reason, tone_reason=reason)


def prepare_pair(bg: np.ndarray, fg_bg: np.ndarray, size: int, align: bool = True, refine: bool = True) -> Prepared:
    """Align bg to fg_bg at full resolution (registration + tone, each only when confident), then resize both to the
    model's size. Alignment first: a shift of a few px at full size is a fraction of a pixel at the model's. With
    `refine`, the full-size pair is kept for the mask's outline (refine.py) when the photo is larger than the model."""
    bg, fg_bg, resized = one_frame(bg, fg_bg)
    if align:
        bg, alignment = align_pair(bg, fg_bg)
    else:
        alignment = not_aligned()
    small = [np.array(_resize(a, (size, size))) for a in (bg, fg_bg)]  # copies: inputs may be read-only
    shape = (fg_bg.shape[0], fg_bg.shape[1])
    full = (bg, fg_bg) if refine and min(shape) >= REFINE_MIN_SCALE * size else None
    return Prepared(bg=small[0], fg_bg=small[1], alignment=alignment, shape=shape, full=full, resized=resized)


@torch.no_grad()
def run_model(model, prep: Prepared, stats: dict | None = None,
              device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model (in eval mode) on this one pair: a batch of one (see the module docstring for why never more)."""
    bg, fg_bg = (torch.from_numpy(a).permute(2, 0, 1)[None].to(device).float() for a in (prep.bg, prep.fg_bg))
    x = model_input(bg, fg_bg, stats)
    return {k: v.float().cpu() for k, v in model(x).items()}


def finish(out: dict[str, torch.Tensor], shape: tuple[int, int], calib: dict | None = None,
           full: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Model outputs (1, 1, size, size) -> {"mask": (H, W) uint8 0/255, "depth": (H, W) float32 [0, 1]} at the
    photo's size, with the run's mask post-processing chosen on validation (None = a plain 0.5 cut). `full`: the
    aligned full-size (bg, fg_bg); given, the mask's outline is decided by them (refine.py, "refine" in the result).

    Each output is resized once and then changed in place: a 24-megapixel photo holds one full-size float32 map at a
    time (96 MB), never several."""
    h, w = shape
    result: dict[str, Any] = {}
    if "mask" in out:
        calib = calib or {"threshold": 0.5, "morph": False}
        refined = None
        if full is not None:
            coarse = postprocess(out["mask"], calib["threshold"], calib["morph"])[0, 0].numpy()  # (size, size) bool
            prob = out["mask"].sigmoid()[0, 0].numpy()
            refined, result["refine"] = refine_mask(prob, coarse, *full)
        if refined is not None:
            result["mask"] = refined
        elif calib["morph"]:  # open/close at the model's size (as chosen), then nearest back to the photo's size

            m = postprocess(out["mask"], calib["threshold"], True)[0, 0].numpy().astype(np.uint8) * 255
            result["mask"] = _resize(m, (w, h), nearest=True)
        else:
            prob = _resize(out["mask"].sigmoid()[0, 0].numpy(), (w, h))  # (H, W) float32
            mask = np.greater(prob, calib["threshold"]).view(np.uint8)  # bool -> 0/1 without a copy
            del prob
            result["mask"] = np.multiply(mask, 255, out=mask)
    if "depth" in out:
        depth = _resize(out["depth"][0, 0].numpy(), (w, h)).astype(np.float32, copy=False)
        result["depth"] = np.clip(depth, 0, 1, out=depth)
    return result


def encode_depth_png(depth01: np.ndarray, rows: int = 512) -> bytes:
    """`formats.encode_depth`'s bytes (16-bit PNG, near = 1), converted `rows` rows at a time: the whole-image float64
    copies it makes would be 2 x 192 MB for a 24-megapixel photo."""
    out = np.empty(depth01.shape, np.uint16)
    for r in range(0, depth01.shape[0], rows):
        d = np.clip(np.asarray(depth01[r:r + rows], dtype=np.float64), 0.0, 1.0)
        out[r:r + rows] = np.round(d * DEPTH_MAX)
    return encode_depth16(out)


def thumbnail(img: np.ndarray, longest: int = 1024) -> np.ndarray:
    """A copy of `img` whose longest side is at most `longest` px (nearest for a mask): what a figure shows anyway,
    without handing full-size photos to matplotlib (it keeps several float copies of each)."""
    h, w = img.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return _resize(img, size, nearest=img.ndim == 2 and img.dtype == np.uint8)


@contextmanager
def single_threaded() -> Iterator[None]:
    """One torch and one OpenCV thread inside, restored after: the same float sums whatever the machine's core count
    (module docstring). Process-wide, so entered once per command, never from worker threads."""
    import cv2

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])


def predict_prepared(model, prep: Prepared, stats: dict | None, device, calib: dict | None) -> dict[str, Any]:
    result: dict[str, Any] = finish(run_model(model, prep, stats, device), prep.shape, calib, prep.full)
    if prep.resized:
        result["resized"] = prep.resized
    result["alignment"] = prep.alignment
    return result


def predict_pair(model, bg: np.ndarray, fg_bg: np.ndarray, size: int, stats: dict | None = None,
                 device: str | torch.device = "cpu", calib: dict | None = None, align: bool = True,
                 refine: bool = True) -> dict[str, Any]:
    """(H, W, 3) uint8 bg and fg_bg -> {"mask": (H, W) uint8 0/255, "depth": (H, W) float32 [0, 1], "alignment":
    align.Alignment} at the photos' size. `calib`: trained_run.load_calibration's dict, None = a 0.5 cut. `refine`: on a
    photo larger than the model, the mask's outline comes from the photo's pixels (refine.py; "refine" says how)."""
    model.eval()
    with single_threaded():
        return predict_prepared(model, prepare_pair(bg, fg_bg, size, align, refine), stats, device, calib)


def predict_one(run_dir: str | Path, bg_path: str | Path, fg_bg_path: str | Path, out_dir: str | Path,
                which: str = "best", device: str | None = None, align: bool = True, refine: bool = True,
                say: Callable[[str], None] | None = None) -> tuple[list[Path], "Alignment"]:
    """Write mask.png (8-bit), depth.png (16-bit, near = bright), alignment.json and prediction.png (side by side)
    into out_dir; returns the files written and the alignment applied. `refine`: see predict_pair. `say` (stderr by
    default) gets one line naming both files when alignment could not run on them."""
    check_two_inputs(bg_path, fg_bg_path)
    bg, fg_bg = load_photo(bg_path), load_photo(fg_bg_path)
    check_pair_files(bg_path, fg_bg_path)  # first: a cut-out given as fg_bg is named as one, not as another size
    bg, fg_bg, resized = one_frame(bg, fg_bg, bg_path, fg_bg_path)
    trained = load_trained_run(run_dir, which, device)
    model, cfg, stats, calib, dev = trained.model, trained.cfg, trained.stats, trained.calibration, trained.device
    thumbs = thumbnail(bg), thumbnail(fg_bg)  # the figure's copies: the full-size photos go as soon as they are used
    model.eval()
    with single_threaded():
        prep = prepare_pair(bg, fg_bg, cfg.size, align, refine)
        del bg, fg_bg
        pred = predict_prepared(model, prep, stats, dev, calib)
    if could_not_align(pred["alignment"]):
        (say or (lambda line: print(line, file=sys.stderr)))(
            f"{bg_path} and {fg_bg_path}: not aligned ({pred['alignment'].reason}), predicted as shot; pass --no-align "
            "to skip alignment on purpose")
    written, fig = write_pair(out_dir, pred, {"bg": str(bg_path), "fg_bg": str(fg_bg_path), "bg_resized": resized},
                              thumbs, title=f"{Path(run_dir).name} ({cfg.model})")
    written.append(save_figure(fig, Path(out_dir) / "prediction.png"))
    return written, pred["alignment"]


def write_pair(out_dir: str | Path, pred: dict[str, Any], record: dict[str, Any],
               thumbs: tuple[np.ndarray, np.ndarray], title: str = "") -> tuple[list[Path], Any]:
    """mask.png, depth.png and alignment.json (`record` + what alignment and refinement did) into out_dir; returns them
    and the bg | fg_bg | mask | depth figure drawn from thumbnails (`thumbs`: bg and fg_bg). The full-size mask and
    depth leave `pred` as they are drawn."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "mask" in pred:
        atomic_write_bytes(out / "mask.png", encode_mask(pred["mask"]))
        written.append(out / "mask.png")
    if "depth" in pred:
        atomic_write_bytes(out / "depth.png", encode_depth_png(pred["depth"]))
        written.append(out / "depth.png")
    record = {**record, **alignment_record(pred["alignment"]),
              "mask_refine": pred.get("refine", {"refined": False, "threshold": None, "band_fraction": 0.0})}
    atomic_write_json(out / "alignment.json", record)
    written.append(out / "alignment.json")
    small = {k: thumbnail(pred.pop(k)) for k in ("mask", "depth") if k in pred}
    return written, side_by_side(*thumbs, small.get("mask"), small.get("depth"), title=title)


