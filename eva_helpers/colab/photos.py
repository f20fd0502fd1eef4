"""Notebook 05's "your own photos": two photos from an upload, a path (a photo on Drive) or the dataset's sample, the
trained model on them at their own size, and the results in a zip to download.

Uploads are validated before anything runs on them (exactly one readable photo per step, neither transparent, the
second the same size as the first); they wait for a file, so they run only with UPLOAD_PHOTOS (otherwise, and outside
Colab or with SMOKE, a sample pair of the dataset is used and the notebook says so). A path never waits, so it is read
whenever given. HEIC (the iPhone default) is read when pillow-heif is installed (the install cell adds it).

The figure is drawn from thumbnails, as `eva predict` draws prediction.png: a 12 MP pair drawn at full size took 11 s
and +740 MB in matplotlib.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from eva_helpers.atomic import atomic_write_bytes
from eva_helpers.data.images import check_opaque
from eva_helpers.errors import BadInputError
from eva_helpers.paths import in_colab, path_problem, require_drive_mounted

UPLOADS = Path("uploads")  # beside the notebook (Colab: /content/uploads)
RESULTS = Path("predictions") / "own_photos"  # mask.png, depth.png, alignment.json, prediction.png; and a .zip of them


def _photo(path: Path, role: str, like: np.ndarray | None, verb: str) -> np.ndarray:
    """One photo file -> (H, W, 3) uint8, checked: readable, opaque, the same size as `like` (the background)."""
    from eva_helpers.predict.pair import ROTATED, load_photo, looks_rotated

    img = load_photo(path)
    check_opaque(path, "bg" if like is None else "fg_bg")
    if like is not None and img.shape != like.shape:
        hint = ROTATED if looks_rotated(like.shape, img.shape) else f"{verb} the same photo, same size, with the object in it"
        raise BadInputError(f"{path}: {img.shape[1]}x{img.shape[0]} but the background is {like.shape[1]}x"
                            f"{like.shape[0]}: {hint}")
    print(f"{role}: {path} ({img.shape[1]}x{img.shape[0]})")
    return img


def check_upload(uploaded: dict[str, bytes], role: str, like: np.ndarray | None = None) -> np.ndarray:
    """One uploaded photo -> (H, W, 3) uint8; exactly one readable file, the same size as `like` when given."""
    if len(uploaded) != 1:
        names = ", ".join(uploaded) or "nothing"
        raise BadInputError(f"{role}: upload exactly one photo (got {names}); run this cell again")
    name, data = next(iter(uploaded.items()))
    base = Path(name.replace("\\", "/")).name
    if path_problem(base, one_part=True):  # "..", "", "a:b", control characters: kept under a name of ours instead
        base = "upload-" + "".join(c if c.isalnum() else "-" for c in role.lower()) + Path(base).suffix.lower()
    path = UPLOADS / base
    atomic_write_bytes(path, data)
    return _photo(path, role, like, "upload")


def upload_photo(role: str, data_dir: str | Path, smoke: bool = False, like: np.ndarray | None = None,
                 upload: bool = True, path: str | Path = "") -> np.ndarray:
    """`path` (BG_PHOTO / FG_BG_PHOTO: a photo on Drive or any folder) when given; else, in Colab with `upload`
    (UPLOAD_PHOTOS), an upload button for one photo (`role` says which); otherwise (or SMOKE) sample 0 of the dataset.
    An upload waits for a file, which would hold up "Run all": off by default."""
    if path:
        return _photo(require_drive_mounted(Path(path), "reading this photo"), role, like, "give")
    if in_colab() and not smoke and upload:
        from google.colab import files  # type: ignore

        print(f"Choose ONE photo: {role}")
        return check_upload(files.upload(), role, like)

    from eva_helpers.data.dataset import ShardDataset

    key = "bg" if like is None else "fg_bg"
    why = ("UPLOAD_PHOTOS is off (set it to True and run these cells to upload your own, or give their paths)"
           if in_colab() and not smoke else "no upload outside Colab (or with SMOKE)")
    print(f"{role}: {why}: using sample 0 of {data_dir} ({key})")
    return ShardDataset(data_dir)[0][key]


def _zip(files: list[Path], dest: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for f in files:
            z.write(f, f.name)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def predict_photos(cfg, bg: np.ndarray, fg_bg: np.ndarray, out: str | Path | None = None, download: bool = False):
    """The trained model on the two photos, at their own size: bg | fg_bg | mask | depth (drawn from thumbnails), after
    one line saying what the alignment of bg to fg_bg applied (as `eva predict` prints it).

    `out` (e.g. RESULTS): mask.png, depth.png, alignment.json and prediction.png written there, as `eva predict` writes
    them, and zipped beside it; with `download` the zip is handed to the browser in Colab (elsewhere, or when it
    fails, one line says where it is)."""
    from eva_helpers.plots import side_by_side
    from eva_helpers.predict.align import describe_alignment
    from eva_helpers.predict.pair import predict_pair, thumbnail, write_pair
    from eva_helpers.training.trained_run import load_trained_run

    trained = load_trained_run(cfg.run_dir, device="cpu", data=cfg.data)
    model, run_cfg, stats, calib = trained.model, trained.cfg, trained.stats, trained.calibration
    thumbs = thumbnail(bg), thumbnail(fg_bg)
    pred = predict_pair(model, bg, fg_bg, run_cfg.size, stats, calib=calib)
    print(describe_alignment(pred["alignment"]))
    if not out:
        small = {k: thumbnail(pred.pop(k)) for k in ("mask", "depth") if k in pred}
        return side_by_side(*thumbs, small.get("mask"), small.get("depth"))
    folder = Path(out)
    written, fig = write_pair(folder, pred, {"run": str(cfg.run_dir)}, thumbs,
                              f"{Path(cfg.run_dir).name} ({run_cfg.model})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # not plots.save_figure: the cell shows this figure
    atomic_write_bytes(folder / "prediction.png", buf.getvalue())
    _hand_over(_zip([*written, folder / "prediction.png"], folder.with_suffix(".zip")), download)
    return fig


def _hand_over(archive: Path, download: bool) -> None:
    """The results zip to the browser (Colab, `download`), or one line saying where it is."""
    if download and in_colab():
        try:
            from google.colab import files  # type: ignore

            files.download(str(archive))
            print(f"results: {archive} (downloading)")
            return
        except Exception as e:  # a blocked pop-up or a closed tab: the zip is still there
            print(f"results: {archive} (the download did not start: {str(e).splitlines()[0] if str(e) else e!r}; "
                  "right-click it in the Files pane > Download)")
            return
    print(f"results: {archive} (mask.png, depth.png, alignment.json, prediction.png)")


def predict_footage(cfg, video: str = "", out: str | Path | None = None, frames: int = 120, smoke: bool = False):
    """Notebook 05's clip: every frame of `video` (a fixed camera's clip; a path, e.g. on Drive) against a background
    plate estimated from it, or, with no video, a clip made from a held-out background of the sample; prints the one
    summary line and returns the strip of frames with their masks."""
    from eva_helpers.demo.clips import demo_clip
    from eva_helpers.predict.footage import footage_strip, predict_video

    out = Path(out or RESULTS.parent / "footage")
    # a missing or unreadable clip is one line from predict_video, naming it
    clip = Path(video) if video else demo_clip(cfg.run_dir, out / "clip", frames=24 if smoke else frames)[0]
    report = predict_video(cfg.run_dir, clip, out / "predicted")
    print(report.line())
    print(report.alignment_line)
    return footage_strip(out / "predicted")
