"""Matplotlib figures for the notebooks and reports: sample grids, histories, predictions, stats.

All functions take plain numpy arrays or torch tensors (CHW or HWC) and return the Figure; `save_figure` writes a PNG
atomically. matplotlib is imported lazily with the Agg backend outside notebooks.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eva_helpers.atomic import atomic_write_bytes


def _plt():
    import matplotlib

    if "ipykernel" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_hwc(img: Any) -> np.ndarray:
    """Tensor/array (3,H,W) | (1,H,W) | (H,W,3) | (H,W) -> numpy (H,W,3) or (H,W), uint8 images kept as they are."""
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy() if img.dtype.is_floating_point else img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


def spread_indices(n: int, k: int = 6, seed: int = 0) -> list[int]:
    """k distinct sample positions drawn with a seed (a plain stride lines up with the bg x fg order: all one cut-out)."""
    return sorted(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False).tolist())


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _plt().close(fig)
    return Path(path)


def _grid(rows: Sequence[Sequence[Any]], titles: Sequence[str], row_labels: Sequence[str] | None = None, cell: float = 2.0):
    plt = _plt()
    n_rows, n_cols = len(rows), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r][c]
            if img is not None:
                a = to_hwc(img)
                if a.ndim == 2:
                    ax.imshow(a, cmap="magma" if titles[c].startswith("depth") else "gray", vmin=0, vmax=1 if a.dtype != np.uint8 else 255)
                else:
                    ax.imshow(a)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if row_labels and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    fig.tight_layout()
    return fig


def show_samples(samples: Sequence[dict], max_rows: int = 6, title: str | None = None):
    """Grid of dataset samples: bg | fg_bg | mask | depth (near = bright), one row per sample, provenance as label.
    title: a line over the grid (which teacher made the depth labels)."""
    samples = list(samples)[:max_rows]
    rows = [[s["bg"], s["fg_bg"], s["mask"].astype(np.float32) if isinstance(s["mask"], np.ndarray) else s["mask"], s["depth"]] for s in samples]
    labels = [_meta_label(s.get("meta", {})) for s in samples]
    fig = _grid(rows, ["bg", "fg_bg", "mask", "depth (near=bright)"], labels)
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, 90), fontsize=8)
        fig.tight_layout()
    return fig


def _meta_label(meta: dict) -> str:
    if not meta:
        return ""
    fg = f"\n+{meta['fg_id']}{' (flip)' if meta.get('flip') else ''}" if meta.get("fg_id") else ""
    return f"#{meta.get('index', '?')} {meta.get('bg_id', '')}{fg}"


def show_predictions(fg_bg, targets: dict, outputs: dict, labels: Sequence[str] | None = None, max_rows: int = 6):
    """Rows of fg_bg | mask target | mask prediction | depth target | depth prediction (whichever the model has)."""
    cols, titles = [], ["fg_bg"]
    if "mask" in outputs:
        titles += ["mask target", "mask predicted"]
    if "depth" in outputs:
        titles += ["depth target", "depth predicted"]
    n = min(max_rows, len(fg_bg))
    for i in range(n):
        row = [fg_bg[i]]
        if "mask" in outputs:
            row += [targets["mask"][i], (outputs["mask"][i].float().sigmoid() > 0.5).float() if hasattr(outputs["mask"], "sigmoid") else outputs["mask"][i]]
        if "depth" in outputs:
            row += [targets["depth"][i], outputs["depth"][i]]
        cols.append(row)
    return _grid(cols, titles, labels[:n] if labels else None)


def plot_history(history: Sequence[dict], keys: Sequence[str] | None = None):
    """Loss (and metric) curves per epoch from history rows (dicts with 'epoch' and numeric fields)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    for k in ("train_loss", "val_loss"):
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            ax[0].plot(epochs, vals, marker="o", label=k)
    ax[0].set_xlabel("epoch"), ax[0].set_title("loss"), ax[0].legend()
    keys = keys or [k for k in ("mask_iou", "depth_delta1", "depth_ssim") if any(k in h for h in history)]
    for k in keys:
        ax[1].plot(epochs, [h.get(k) for h in history], marker="o", label=k)
    ax[1].set_xlabel("epoch"), ax[1].set_title("validation metrics"), ax[1].set_ylim(0, 1)
    if keys:
        ax[1].legend()
    fig.tight_layout()
    return fig


def plot_stats(stats: dict):
    """Per-channel mean/std bars (the peers' table), the foreground-fraction and depth histograms (stats.json)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.2))
    x = np.arange(3)
    for j, key in enumerate(("bg", "fg_bg")):
        ax[0].bar(x + 0.4 * j, stats[key]["mean"], 0.4, yerr=stats[key]["std"], label=key,
                  color=["#c44", "#4a4", "#44c"], alpha=0.45 + 0.45 * j, capsize=3)
    ax[0].set_xticks(x + 0.2, ["R", "G", "B"]), ax[0].set_title("channel mean ± std (0-1)"), ax[0].legend()
    frac = stats["mask_fraction"]
    ax[1].stairs(frac["hist"], np.linspace(0, 1, frac["bins"] + 1), fill=True)
    ax[1].set_title(f"foreground fraction per sample (mean {frac['mean']:.3f})"), ax[1].set_xlabel("fraction")
    dh = stats["depth_hist"]
    ax[2].stairs(dh["counts"], dh["edges"], fill=True, color="#a60")
    ax[2].set_title("depth histogram (near = 1)")
    fig.tight_layout()
    return fig


def side_by_side(bg, fg_bg, mask=None, depth=None, title: str = ""):
    """One row: bg | fg_bg | predicted mask | predicted depth (for `eva predict` and the upload cell)."""
    row = [bg, fg_bg] + ([mask] if mask is not None else []) + ([depth] if depth is not None else [])
    titles = ["bg", "fg_bg"] + (["mask"] if mask is not None else []) + (["depth (near=bright)"] if depth is not None else [])
    fig = _grid([row], titles, cell=3.0)
    if title:
        fig.suptitle(title)
    return fig
