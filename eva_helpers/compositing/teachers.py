"""Depth teachers behind one interface: images in, relative inverse depth out (near = larger).

`get_teacher("geometric")` needs no weights and no torch/transformers (offline default, tests, embedded sample);
`"depth-anything-v2-small"` runs Depth Anything V2 Small through `transformers` (Colab default);
`"midas-small"` runs MiDaS small through `torch.hub`. The deep teachers import their libraries lazily and say which
square `input_size` they were made for (518 and 256 px): the build feeds them backgrounds (and composites) prepared
at that size from the full-resolution photo, then resizes their maps down to the build size.

`resolve_teacher("auto")` picks the model teacher on a GPU and never the geometric one unasked; `describe_labels` says
in one line which teacher made a dataset's labels, and that the geometric teacher's are synthetic.

How objects enter the labels (the geometric layer, the contrast guard, hybrid alignment) lives in labels.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from eva_helpers.compositing.labels import MIN_CONTRAST, RELIEF, layer_object
from eva_helpers.data.formats import MASK_THRESHOLD, read_manifest
from eva_helpers.errors import EvaError

DEFAULT_TEACHER = "geometric"
DA_V2_SMALL = "depth-anything/Depth-Anything-V2-Small-hf"


class DepthTeacher:
    """Interface: `predict(list of (H, W, 3) uint8 RGB) -> list of (H, W) float32 relative inverse depth`.

    `input_size`: the square side the model was made for (None: any size, used as given). `predict_composites`
    labels composites; it may use the object masks (the geometric teacher does: it cannot see objects in pixels).
    """

    name = "base"
    input_size: int | None = None

    def __init__(self, batch_size: int = 16):
        self.batch_size = int(batch_size)

    def predict_composites(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Composites (H, W, 3) uint8 and their placed alphas (H, W) uint8 -> raw maps (H', W') float32."""
        return self.predict(images)

    @property
    def info(self) -> dict[str, Any]:
        """JSON-able description recorded in the manifest."""
        return {"name": self.name}

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class GeometricTeacher(DepthTeacher):
    """A weight-free stand-in for a depth model: a ground plane seen by a level camera, an image-dependent term, and
    pasted objects as upright rounded layers standing on that ground.

    Scene, for an (H, W) image, with horizon row `hz = horizon * (H - 1)` (horizon = 0.4) and
    t = max(0, (row - hz) / (H - 1 - hz)):
        plane(row) = far + (1 - far) * t          (far = 0.1: constant above the horizon, i.e. sky or walls)
        inverse_depth = plane + texture * L_blur  (texture = 0.1)
    where L_blur is the image's luminance (0..1, BT.601) blurred heavily (area-downscaled to 8x8 then bilinearly
    upscaled), so backgrounds differ smoothly but nothing object-shaped appears. Inverse depth rises linearly towards
    the bottom row because, for a flat ground and a pinhole camera, disparity is proportional to (row - horizon).
    Units are arbitrary and relative, like a monocular model's.

    Objects (`labels.layer_object`, used by every labelling mode: the teacher is told where the object is, since it
    cannot see it in pixels): an upright object at the disparity of its ground contact (the background's mean value
    along the mask's lowest row), plus a rounded bulge: an object about as thick as it is wide, whose centre is nearer
    than its silhouette by RELIEF * (R / S) * d_contact (R = the mask's largest inscribed radius in px, S = the image
    side as the focal length, d_contact floored at 0.25), shaped sqrt(1 - (1 - u)^2) with u = (dt - 0.5) / (R - 0.5)
    over the distance transform dt (a circular cross-section). Then `labels.ensure_contrast`: an object whose mean
    differs from the ring of background around it by less than MIN_CONTRAST (e.g. one whose bottom edge sits above
    the horizon, where the plane is flat) is moved in front of that ring by the shortfall: a pasted object occludes
    what is behind it, so it is nearer (moved back instead only where 1.0 would stop it short).
    Values stay in the map's range; no object ever takes the background's value around it.
    """

    name = "geometric"

    def __init__(self, batch_size: int = 64, horizon: float = 0.4, far: float = 0.1, texture: float = 0.1,
                 device: str | None = None):
        super().__init__(batch_size)  # device: accepted for a uniform interface; this teacher is numpy only
        self.horizon, self.far, self.texture = float(horizon), float(far), float(texture)

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "horizon": self.horizon, "far": self.far, "texture": self.texture,
                "min_contrast": MIN_CONTRAST, "relief": RELIEF}

    def plane(self, h: int, w: int) -> np.ndarray:
        """(h, w) float32 ground-plane inverse depth."""
        hz = self.horizon * (h - 1)
        t = np.clip((np.arange(h, dtype=np.float64) - hz) / max(h - 1 - hz, 1e-9), 0.0, 1.0)
        col = self.far + (1.0 - self.far) * t  # (h,)
        return np.repeat(col[:, None], w, axis=1).astype(np.float32)

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import cv2

        out = []
        for im in images:
            h, w = im.shape[:2]
            lum = im[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0  # (h, w)
            small = cv2.resize(lum, (8, 8), interpolation=cv2.INTER_AREA)
            blur = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append((self.plane(h, w) + self.texture * blur).astype(np.float32))
        return out

    def predict_composites(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """The scene map of each composite with its object (alpha >= 128) inserted by `layer_object`."""
        out = []
        for raw, mask in zip(self.predict(images), masks):
            d, lo, hi = normalise(raw)  # the layer is built in [0, 1], then mapped back to raw units
            out.append((lo + layer_object(d, mask >= MASK_THRESHOLD) * (hi - lo)).astype(np.float32))
        return out


def _torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _autocast(device):
    """Autocast in the precision the device runs natively (precision.amp_dtype); nothing on CPU."""
    from eva_helpers.precision import autocast  # imports torch: only the deep teachers get here

    return autocast(device)


def _same_shape_batches(images: list[np.ndarray], batch_size: int):
    """Consecutive runs of same-sized images, at most batch_size long (a model batch needs one size)."""
    i = 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
            j += 1
        yield images[i:j]
        i = j


def _resize_to(pred, h: int, w: int) -> list[np.ndarray]:
    """(B, h', w') tensor -> list of (h, w) float32 numpy, bicubic (what the models' own demos do)."""
    import torch.nn.functional as F

    up = F.interpolate(pred.float().unsqueeze(1), size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    return [a for a in up.cpu().numpy().astype(np.float32)]


class HFDepthTeacher(DepthTeacher):
    """Depth Anything V2 Small (or any `AutoModelForDepthEstimation`) via transformers; outputs relative disparity."""

    name = "depth-anything-v2-small"

    def __init__(self, model_id: str = DA_V2_SMALL, model_dir: str | None = None, device: str | None = None,
                 batch_size: int = 16, input_size: int | None = None):
        super().__init__(batch_size)
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise EvaError("teacher 'depth-anything-v2-small' needs transformers: pip install transformers") from None
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.source = str(model_dir) if model_dir else model_id
        self.device = _torch_device(device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.source)
            self.model = AutoModelForDepthEstimation.from_pretrained(self.source).to(self.device).eval()
        except (OSError, ValueError) as e:  # missing folder, bad id, no connection
            raise EvaError(f"cannot load depth model {self.source!r} ({str(e).splitlines()[0]}); "
                           "check the id, your connection, or pass model_dir=<a local copy>") from None
        # the side the processor resizes to (518 for Depth Anything V2); input_size overrides it (tests: tiny)
        size = getattr(self.processor, "size", None) or {}
        self.input_size = int(input_size or size.get("height") or size.get("shortest_edge") or 518)
        if input_size:
            self.processor.size = {"height": self.input_size, "width": self.input_size}

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "input_size": self.input_size}

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        out: list[np.ndarray] = []
        for batch in _same_shape_batches(images, self.batch_size):
            h, w = batch[0].shape[:2]
            inputs = self.processor(images=list(batch), return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device)
            with torch.inference_mode(), _autocast(self.device):
                pred = self.model(pixel_values=pixel_values).predicted_depth  # (B, h', w'), near = larger
            out.extend(_resize_to(pred, h, w))
        return out


class MidasTeacher(DepthTeacher):
    """MiDaS small via torch.hub (downloads code and weights; not usable offline). Outputs relative inverse depth."""

    name = "midas-small"

    def __init__(self, device: str | None = None, batch_size: int = 16, repo: str = "intel-isl/MiDaS",
                 input_size: int = 256):
        super().__init__(batch_size)
        import torch

        self.input_size = int(input_size)  # small_transform resizes to 256 anyway: inputs prepared there lose nothing
        self.device = _torch_device(device)
        self.model = torch.hub.load(repo, "MiDaS_small", trust_repo=True).to(self.device).eval()
        self.transform = torch.hub.load(repo, "transforms", trust_repo=True).small_transform

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "input_size": self.input_size}

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        out: list[np.ndarray] = []
        for batch in _same_shape_batches(images, self.batch_size):
            h, w = batch[0].shape[:2]
            x = torch.cat([self.transform(np.ascontiguousarray(im[..., :3])) for im in batch]).to(self.device)
            with torch.inference_mode(), _autocast(self.device):
                pred = self.model(x)  # (B, h', w')
            out.extend(_resize_to(pred, h, w))
        return out


TEACHERS = {"geometric": GeometricTeacher, "depth-anything-v2-small": HFDepthTeacher, "midas-small": MidasTeacher}
AUTO = "auto"  # the model teacher on a GPU; never the geometric one unless the caller allows synthetic labels
GPU_TEACHER = "depth-anything-v2-small"
SYNTHETIC = "geometric"  # the teacher whose labels are made up from the image's layout, not estimated from its content

_ABOUT = {
    "geometric": "the geometric teacher: SYNTHETIC labels (a ground-plane guess from each photo's layout with the "
                 "object as a layer on it, not a measurement or a model's estimate of the scene)",
    "depth-anything-v2-small": "Depth Anything V2 Small: a pretrained model's estimate of relative depth (no units)",
    "midas-small": "MiDaS small: a pretrained model's estimate of relative depth (no units)",
}


def resolve_teacher(name: str, recorded: str | None = None, *, allow_synthetic: bool = False,
                    gpu: bool | None = None, where: str = "this build") -> str:
    """The teacher a build uses. A named one as given (the geometric one chosen on purpose included). "auto": the
    teacher a started build recorded (a reconnect must not switch teachers), else Depth Anything V2 Small on a GPU.

    "auto" never falls back to synthetic labels unasked: without a GPU, or on a build started with the geometric
    teacher, it is a one-line EvaError unless `allow_synthetic` (a caller that accepts synthetic labels). gpu: whether
    CUDA is here (default: ask torch; no torch means no GPU). where: the build's folder, named in the messages.
    """
    if name != AUTO:
        return name
    if gpu is None:
        try:
            import torch
        except ImportError:
            gpu = False
        else:
            gpu = bool(torch.cuda.is_available())
    if recorded and recorded != SYNTHETIC:
        if not gpu:
            print(f"{where} was started with the {recorded} teacher, which is slow without a GPU: "
                  "Runtime > Change runtime type > GPU, then run all cells again")
        return recorded
    if recorded == SYNTHETIC and not allow_synthetic:
        raise EvaError(f"{where} was started with the geometric teacher (synthetic ground-plane labels): set "
                       f'TEACHER = "geometric" to finish it on purpose, or build a new DATASET with the {GPU_TEACHER} '
                       "teacher")
    if gpu:
        return recorded or GPU_TEACHER
    if allow_synthetic:
        return SYNTHETIC
    raise EvaError('TEACHER = "auto" found no GPU here: switch the runtime to GPU (Runtime > Change runtime type > '
                   'GPU) and run all cells again, or set TEACHER = "geometric" for synthetic ground-plane labels on '
                   "purpose")


def describe_labels(teacher: dict[str, Any] | str | None) -> str:
    """One plain line saying which teacher made a dataset's depth labels (a manifest's "teacher" entry or a name)."""
    info = teacher if isinstance(teacher, dict) else {"name": teacher}
    name = info.get("name") or "unknown"
    about = _ABOUT.get(name, f"the {name} teacher")
    source = info.get("source")
    if source and source != DA_V2_SMALL and name != SYNTHETIC:
        about += f", loaded from {source}"
    return f"depth labels: {about}"


def dataset_labels(data_dir) -> str:
    """`describe_labels` for the dataset in `data_dir`, read from its manifest (what the build recorded)."""
    m = read_manifest(data_dir)
    return describe_labels(m.get("teacher") or m.get("params", {}).get("teacher"))


def get_teacher(name: str = DEFAULT_TEACHER, device: str | None = None, batch_size: int | None = None,
                **kw: Any) -> DepthTeacher:
    """Teacher by name; unknown names raise EvaError listing the valid ones."""
    if name not in TEACHERS:
        raise EvaError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}")
    if batch_size is not None:
        kw["batch_size"] = batch_size
    return TEACHERS[name](device=device, **kw)


def normalise(raw: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(H, W) raw inverse depth -> (d in [0, 1] float64, raw min, raw max); a flat map gives zeros."""
    lo, hi = float(raw.min()), float(raw.max())
    d = (raw.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(raw.shape, np.float64)
    return d, lo, hi
