"""Second-shot changes for evaluation: how a real second photo differs from the first, applied to fg_bg alone.

Our composites have bg and fg_bg pixel-identical outside the object; two real shots never are (exposure, tone curve,
white balance, hand shake, noise, JPEG, the object's own shadow). `perturb_sample(sample, name, seed)` applies one
named change to a raw dataset sample (numpy arrays, before the test transform) and returns a new dict: bg is never
touched (the dataset shares it read-only), and only a shift moves the labels (the object moves with the photo), so
the metrics stay meaningful under every change.

Determinism: every random draw comes from `default_rng([seed, <op kind>])`, so the same (name, seed, sample) gives the
same bytes, and one sample gets the same shake direction, noise pattern and shadow side in `shift1`, `shift2` and
`phone` alike (strengths are comparable row to row). `PerturbedDataset` is what `evaluate_run(perturb=...)` scores:
the raw sample perturbed with seed = its dataset position, optionally registered (`align.align_pair`), then the usual
test transform.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from eva_helpers.data.compression import encode_decode
from eva_helpers.errors import BadInputError
from eva_helpers.evaluation import scene_changes as scene
from eva_helpers.predict.align import align_pair

MOVES_LABELS = ("shift", "keystone", "rotate", "parallax")  # kinds that move the whole shot, labels included
Op = tuple[str, tuple]  # (kind, parameters); combinations list them as a camera would: scene, shake, optics, tone, JPEG


@dataclass(frozen=True)
class Perturbation:
    """A named second-shot change: `doc` says it in a user's words, `ops` is what is applied, in order."""
    doc: str
    ops: tuple[Op, ...] = ()


def _p(doc: str, *ops: Op) -> Perturbation:
    return Perturbation(doc, tuple(ops))


PERTURBATIONS: dict[str, Perturbation] = {
    "clean": _p("no change: the second shot is the first one (how our composites are made)"),
    "exposure+10": _p("second shot 10 % brighter (pixel values x1.10)", ("gain", (1.10, 1.10, 1.10))),
    "exposure-10": _p("second shot 10 % darker (pixel values x0.90)", ("gain", (0.90, 0.90, 0.90))),
    "exposure+20": _p("second shot 20 % brighter (pixel values x1.20, highlights clip)", ("gain", (1.20, 1.20, 1.20))),
    "exposure-20": _p("second shot 20 % darker (pixel values x0.80)", ("gain", (0.80, 0.80, 0.80))),
    "gamma0.85": _p("another tone curve: brighter mid-tones (gamma 0.85)", ("gamma", (0.85,))),
    "gamma1.2": _p("another tone curve: darker mid-tones (gamma 1.2)", ("gamma", (1.2,))),
    "wb": _p("warmer white balance (red x1.06, blue x0.94)", ("gain", (1.06, 1.0, 0.94))),
    "wb-strong": _p("much warmer white balance (red x1.12, blue x0.88)", ("gain", (1.12, 1.0, 0.88))),
    "shift1": _p("hand shake: the second shot moved 1 px (the object and its labels move with it)", ("shift", (1,))),
    "shift2": _p("hand shake: the second shot moved 2 px (the object and its labels move with it)", ("shift", (2,))),
    "jpeg60": _p("saved as JPEG quality 60 with 4:2:0 colour, as phones do", ("jpeg", (60,))),
    "jpeg40": _p("saved as JPEG quality 40 with 4:2:0 colour (a chat app's re-compression)", ("jpeg", (40,))),
    "noise4": _p("sensor noise: Gaussian, sigma 4 of 255", ("noise", (4.0,))),
    "noise8": _p("low-light sensor noise: Gaussian, sigma 8 of 255", ("noise", (8.0,))),
    "blur": _p("slightly soft focus (Gaussian blur, sigma 0.8 px)", ("blur", (0.8,))),
    "blur-strong": _p("out of focus or moved (Gaussian blur, sigma 1.5 px)", ("blur", (1.5,))),
    "shadow": _p("the object casts a soft shadow on the ground beside it (25 % darker)", ("shadow", (0.25,))),
    "shadow-strong": _p("the object casts a dark shadow on the ground beside it (45 % darker)", ("shadow", (0.45,))),
    "shadow35": _p("the object casts a dark soft shadow on the ground beside it (35 % darker)", ("shadow", (0.35,))),
    "shadow-far": _p("a soft shadow far from the object (35 % darker, 15 % of the frame)", ("blob", (-0.35, 0.15))),
    "reflection": _p("a reflection or a patch of light far from the object (40 % brighter, 15 % of the frame)",
                     ("blob", (0.4, 0.15))),
    "moved-object": _p("something in the background moved: a patch of 12 % of the frame shows the scene 4 % to one side",
                       ("moved", (0.12, 0.04))),
    "hdr": _p("a phone's local tone mapping (HDR): dark regions lifted, bright ones lowered, region by region",
              ("local_tone", (0.35,))),
    "motion-blur": _p("moved during the shot: motion blur over 6 % of the frame (15 px on a 256 px photo)",
                      ("motion", (0.06,))),
    "defocus": _p("out of focus: a disc blur of radius 2.5 % of the frame (6 px on a 256 px photo)", ("defocus", (0.025,))),
    "rotate2": _p("the second shot turned 2 degrees (labels move with it)", ("rotate", (2.0, 1.0))),
    "rotate5": _p("the second shot turned 5 degrees (labels move with it)", ("rotate", (5.0, 1.0))),
    "zoom5": _p("the second shot zoomed in 5 % (labels move with it)", ("rotate", (0.0, 1.05))),
    "keystone4": _p("perspective: the second shot from a little lower, one edge 4 % narrower (labels move with it)",
                    ("keystone", (0.04,))),
    "parallax": _p("the camera moved sideways: near things shift up to 3 % of the frame against far ones (8 px on a "
                   "256 px photo; labels move with it)", ("parallax", (0.03,))),
    "handheld": _p("a typical hand-held second shot: 2 % keystone, 1 degree, 5 % brighter, noise 3, JPEG 70",
                   ("keystone", (0.02,)), ("rotate", (1.0, 1.0)), ("gain", (1.05, 1.05, 1.05)), ("noise", (3.0,)),
                   ("jpeg", (70,))),
    "phone": _p("a typical second phone shot: 5 % brighter, a little warmer, noise 3, 1 px shake, JPEG 70",
                ("shift", (1,)), ("gain", (1.05 * 1.03, 1.05, 1.05 * 0.97)), ("noise", (3.0,)), ("jpeg", (70,))),
    "phone-strong": _p("a careless second shot: the object's shadow, 2 px shake, 10 % brighter, warmer, noise 6, "
                       "JPEG 50", ("shadow", (0.3,)), ("shift", (2,)), ("gain", (1.10 * 1.06, 1.10, 1.10 * 0.94)),
                       ("noise", (6.0,)), ("jpeg", (50,))),
    "lowlight": _p("a dim indoor second shot: soft focus, darker mid-tones, warm light, noise 8, JPEG 60",
                   ("blur", (0.8,)), ("gamma", (1.2,)), ("gain", (1.08, 1.0, 0.9)), ("noise", (8.0,)),
                   ("jpeg", (60,))),
}
SUITE: tuple[str, ...] = tuple(PERTURBATIONS)  # table order: clean, each kind weak then strong, combinations last


def names_line() -> str:
    """The valid names, for error messages and help."""
    return ", ".join(PERTURBATIONS)


def describe() -> str:
    """One line per perturbation: name and what it does (`eva eval --perturb list`)."""
    width = max(map(len, PERTURBATIONS))
    return "\n".join(f"{n:<{width}}  {p.doc}" for n, p in PERTURBATIONS.items())


def check_name(name: str) -> str:
    """The name itself, or BadInputError listing the valid ones."""
    if name not in PERTURBATIONS:
        raise BadInputError(f"unknown perturbation {name!r}: choose from {names_line()}")
    return name


# ---------------------------------------------------------------------------------------------- the operations
def _rng(seed: int, kind: str) -> np.random.Generator:
    """The draw for one kind of change of one sample: the same in every combination that contains it."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(kind.encode())])


def _lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gain(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel multiplication (exposure, white balance), rounded and clipped, through lookup tables."""
    levels = np.arange(256, dtype=np.float64)
    out = np.empty_like(img)
    for c, g in enumerate(gains):
        out[..., c] = _lut(levels * g)[img[..., c]]
    return out


def _gamma(img: np.ndarray, g: float) -> np.ndarray:
    return _lut(255.0 * (np.arange(256) / 255.0) ** g)[img]


def _shift_index(n: int, d: int) -> np.ndarray:
    return np.clip(np.arange(n) - d, 0, n - 1)


def shift_offsets(seed: int, px: int) -> tuple[int, int]:
    """(dy, dx) of a `px` shake: one of the 8 directions, drawn from the seed."""
    dirs = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    dy, dx = dirs[int(_rng(seed, "shift").integers(len(dirs)))]
    return dy * px, dx * px


def shift_array(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx) px (down, right), the uncovered border replicated: a new array."""
    h, w = arr.shape[:2]
    return arr[_shift_index(h, dy)][:, _shift_index(w, dx)]


def _noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    n = _rng(seed, "noise").standard_normal(img.shape) * sigma
    return _lut(img.astype(np.float64) + n)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def shadow_map(mask: np.ndarray, seed: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the object's silhouette cast on the ground behind it, blurred.

    The mask is squashed towards and sheared about its lowest row (the ground contact), as a light in front of the
    object and to one side lays its shadow on a ground plane: 30-60 % of the object's height, leaning 0.6-1.2 px per
    px of height to the left or right (both drawn from the seed). The penumbra is a Gaussian blur of 4 % of the object's
    height (at least 1 px). Zero where there is no object.
    """
    import cv2

    ys = np.flatnonzero(mask.any(1))
    if not len(ys):
        return np.zeros(mask.shape, np.float32)
    rng = _rng(seed, "shadow")
    yb, height = float(ys[-1]), float(ys[-1] - ys[0] + 1)
    squash, lean = rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.2) * rng.choice([-1.0, 1.0])
    # x' = x + lean * (yb - y), y' = yb - squash * (yb - y): the contact row stays, the top lands beside and behind
    m = np.array([[1.0, -lean, lean * yb], [0.0, squash, (1.0 - squash) * yb]], np.float64)
    h, w = mask.shape
    cast = cv2.warpAffine(mask.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
    sigma = max(1.0, 0.04 * height)
    return np.clip(cv2.GaussianBlur(cast, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT), 0.0, 1.0)


def _shadow(img: np.ndarray, mask: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """fg_bg darkened by up to `strength` under the cast shadow, outside the object only (the object is lit)."""
    factor = 1.0 - strength * shadow_map(mask, seed) * (mask == 0)
    return _lut(img.astype(np.float64) * factor[..., None])


def perturb_sample(sample: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    """A new sample dict with the named change applied to fg_bg (and, for a shake, to mask and depth too).

    `sample` is a raw dataset sample (numpy `bg`, `fg_bg` (H, W, 3) uint8, `mask` (H, W) {0, 1}, `depth` (H, W)
    float32, `meta`); it is never written into. Unknown names raise BadInputError listing the valid ones.
    """
    ops = PERTURBATIONS[check_name(name)].ops
    out = dict(sample)
    fg, mask, depth = sample["fg_bg"], sample["mask"], sample["depth"]
    for kind, args in ops:
        if kind == "gain":
            fg = _gain(fg, args)
        elif kind == "gamma":
            fg = _gamma(fg, *args)
        elif kind == "shift":
            dy, dx = shift_offsets(seed, *args)
            fg, mask, depth = (shift_array(a, dy, dx) for a in (fg, mask, depth))
        elif kind == "jpeg":  # a real JPEG round trip with 4:2:0 chroma, as phone cameras save (the dataset: 4:4:4)

            fg = encode_decode(fg, *args, subsampled=True)
        elif kind == "noise":
            fg = _noise(fg, *args, seed)
        elif kind == "blur":
            fg = _blur(fg, *args)
        elif kind == "shadow":
            fg = _shadow(fg, mask, *args, seed)
        elif kind in MOVES_LABELS[1:]:  # the whole second shot moves: labels with it
            move = {"keystone": scene.keystone, "rotate": scene.rotate_zoom, "parallax": scene.parallax}[kind]
            fg, mask, depth = move((fg, mask, depth), *args, _rng(seed, kind))
        elif kind == "local_tone":
            fg = scene.local_tone(fg, *args)
        elif kind == "motion":
            fg = scene.motion_blur(fg, *args, _rng(seed, kind))
        elif kind == "defocus":
            fg = scene.defocus(fg, *args)
        elif kind == "blob":
            fg = scene.light_blob(fg, mask, *args, _rng(seed, kind))
        elif kind == "moved":
            fg = scene.moved_patch(fg, mask, *args, _rng(seed, kind))
        else:  # pragma: no cover - the registry above is the only source of ops
            raise ValueError(f"unknown operation {kind!r} in perturbation {name!r}")
    out.update(fg_bg=fg, mask=mask, depth=depth)
    return out


class PerturbedDataset:
    """A dataset view that scores pairs as a second shot would give them: the raw sample perturbed (seed = its
    dataset position), optionally bg registered to fg_bg (`align.align_pair`, recorded in `meta`), then `transform`.

    Wraps a ShardDataset (transform None or ignored); `ds[pos]` / `ds[(pos, seed)]` like the dataset itself, so
    `make_loader` and the best/worst figure use it unchanged. Picklable (spawned workers rebuild it).
    """

    def __init__(self, dataset, name: str, transform: Callable[[dict, int | None], dict] | None,
                 align: bool = False):
        self.dataset, self.name, self.transform, self.align = dataset, check_name(name), transform, align

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        pos, seed = key if isinstance(key, tuple) else (key, None)
        row = int(self.dataset.indices[int(pos)])
        sample = perturb_sample(self.dataset.load(row), self.name, row)
        if self.align:

            bg, how = align_pair(sample["bg"], sample["fg_bg"])
            sample["bg"] = bg
            sample["meta"] = {**sample["meta"], "align_applied": bool(how.applied),
                              "align_tone_applied": bool(how.tone_applied),
                              "align_jpeg_applied": bool(how.jpeg_applied)}
        return self.transform(sample, seed) if self.transform is not None else sample
