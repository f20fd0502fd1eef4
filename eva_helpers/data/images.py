"""Listing and loading the build's inputs: background photos and RGBA cut-outs.

Input folders are only ever read. Drive folders collect junk (`.DS_Store`, `desktop.ini`, `Thumbs.db`, sub-folders):
it is skipped and counted so the manifest can say what was left out. Unreadable images raise `BadInputError`
naming the file, or with `on_bad="skip"` are skipped and reported.

An animated image (an animated WebP or PNG) is refused, naming the file and its frame count, rather than silently
reduced to its first frame: which frame is "the photo" is the user's choice. A pair of photos must be stored the same
way: a greyscale bg beside a colour fg_bg (or the reverse) is refused by `check_same_kind`, since the colour difference
alone would read as an object everywhere.

HEIC/HEIF (the iPhone default) is read through pillow-heif, an optional dependency (`pip install
"eva-maskdepth[heic]"`); without it such a file is refused in one line saying how to add it, never skipped unseen.
A photo with transparent pixels is refused by `check_opaque` (predict and the notebooks): its transparent part holds no
picture, and whatever colour it were flattened on (black, white) differs from the other photo and reads as object.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from eva_helpers.atomic import sha256_bytes
from eva_helpers.errors import BadInputError

HEIF_EXTS = (".heic", ".heif", ".hif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp") + HEIF_EXTS
# ISO-BMFF major brands of HEIF stills and sequences (bytes 8-12, after "ftyp"): a HEIC saved under another name
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
HEIF_INSTALL = 'pip install "eva-maskdepth[heic]" (or pip install pillow-heif)'
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
JUNK_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
MIN_BOX = 4  # px: a cut-out's alpha box smaller than this is degenerate (nothing useful to paste)
# Decoded images larger than this are refused before decoding (a decompression bomb: a small file claiming gigapixels).
# PIL's own default limit: ~9500 x 9500, above any phone photo (50 MP); build and predict share it.
MAX_PIXELS = 89_478_485
_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class Listing:
    """What `list_images` found: image files in sorted id order, plus what was skipped and why."""

    folder: Path
    files: list[Path]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count ("junk", "subfolder", "other", "bad")
    skipped_names: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # the "other" names: files that are not photos eva reads


@dataclass
class Source:
    """One loaded input file: its id (file stem), provenance and pixels."""

    id: str
    file: str
    sha256: str
    bytes: int
    array: np.ndarray | None  # bg: (H, W, 3) uint8 RGB; fg: (H, W, 4) uint8 RGBA (or as `prepare` returned it)
    width: int = 0  # of the decoded file, before any `prepare`
    height: int = 0


def _count(listing: Listing, reason: str, name: str) -> None:
    listing.skipped[reason] = listing.skipped.get(reason, 0) + 1
    listing.skipped_names.append(name)


def list_images(folder: str | Path) -> Listing:
    """Image files of `folder` (by extension, case-insensitive), junk skipped and counted; error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder")
    listing = Listing(folder=folder, files=[], skipped={"junk": 0, "subfolder": 0, "other": 0, "bad": 0})
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        name = p.name
        if p.is_dir():
            _count(listing, "subfolder", name + "/")
        elif name.startswith(".") or name.lower() in JUNK_NAMES or name.lower().endswith(".ini"):
            _count(listing, "junk", name)  # .DS_Store, ._AppleDouble, desktop.ini, Thumbs.db
        elif p.suffix.lower() in IMAGE_EXTS and p.is_file():
            listing.files.append(p)
        else:
            _count(listing, "other", name)
            listing.others.append(name)
    if not listing.files:
        raise BadInputError(f"{folder}: no images here (expected {', '.join(IMAGE_EXTS)} files)")
    stems: dict[str, str] = {}
    for p in listing.files:
        if p.stem in stems:
            raise BadInputError(f"{folder}: {stems[p.stem]} and {p.name} share the id {p.stem!r}; rename one")
        stems[p.stem] = p.name
    listing.files.sort(key=lambda q: q.stem)  # ids in sorted order
    return listing


def is_heif(path: Path, data: bytes = b"") -> bool:
    """A HEIC/HEIF file, by its extension or its first bytes."""
    return path.suffix.lower() in HEIF_EXTS or (data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS)


def heif_support(path: Path) -> None:
    """Let PIL open HEIC/HEIF (pillow-heif's opener, registered once per process); without pillow-heif, one line naming
    the file and how to add support."""
    try:
        import pillow_heif
    except ImportError:
        raise BadInputError(f"{path}: a HEIC/HEIF photo, and HEIC support is not installed: {HEIF_INSTALL}, or export "
                            "the photo as JPEG") from None
    from PIL import Image

    if ".heic" not in Image.registered_extensions():
        pillow_heif.register_heif_opener()


def _open(path: Path, data: bytes):
    """Decode fully (so truncated files fail here, not later); returns an EXIF-upright PIL image."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    if not data:
        raise BadInputError(f"{path}: empty file (0 bytes)")
    heif = is_heif(path, data)
    if heif:
        heif_support(path)
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG/PNG must fail, not come back half grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides, below
            im = Image.open(io.BytesIO(data))
            _check_pixels(path, im.width * im.height)
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and not heif:  # a HEIF with several images opens at its primary one, the photo shown
                raise BadInputError(f"{path}: an animated image ({frames} frames); save the frame you mean as a still "
                                    "JPEG or PNG and use that")
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: turn upright (a copy only when it must)
                im = ImageOps.exif_transpose(im)
    except BadInputError:
        raise
    except UnidentifiedImageError:  # its message names the BytesIO, not the file
        raise BadInputError(f"{path}: is not an image (or not a format PIL reads: use JPEG, PNG, WebP or HEIC)") from None
    except Image.DecompressionBombError as e:  # over twice PIL's limit: refused inside Image.open
        n = re.search(r"\((\d+) pixels\)", str(e))
        raise BadInputError(_too_large(path, int(n.group(1)) if n else None)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInputError(f"{path}: unreadable image ({msg})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return im


def _check_pixels(path: Path, pixels: int) -> None:
    if pixels > MAX_PIXELS:
        raise BadInputError(_too_large(path, pixels))


def _too_large(path: Path, pixels: int | None) -> str:
    return (f"{path}: {pixels or 'too many'} pixels, over the limit of {MAX_PIXELS} (a decompression bomb, or a huge "
            "scan): resize it below ~9000 x 9000 px")


def _to_uint8(arr: np.ndarray, mode: str = "") -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8. 16-bit modes (I;16*: 16-bit PNGs) scale by their bit depth, so a
    dark 16-bit photo stays dark; 32-bit "I" and float "F" carry no depth, so their range is inferred."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        return np.clip(np.round(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    top = 65535 if mode in _16BIT or arr.max() > 255 else 255
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def decode_background(path: str | Path, data: bytes) -> np.ndarray:
    """Any mode (CMYK, 16-bit, palette, grayscale, RGBA) -> (H, W, 3) uint8 RGB; alpha is dropped."""
    im = _open(Path(path), data)
    if im.mode in ("I", "F") + _16BIT:
        gray = _to_uint8(np.asarray(im), im.mode)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert() copies even to its own mode
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


GREY_MODES = ("1", "L", "LA", "La", "I", "F") + _16BIT


def is_greyscale_file(path: str | Path) -> bool:
    """Whether the image file stores one grey channel (read from its header only; nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in GREY_MODES
    except Exception:  # unreadable: read_image says why, with the file's name
        return False


def check_same_kind(bg_path: str | Path, fg_bg_path: str | Path) -> None:
    """Refuse a pair where one photo is greyscale and the other colour (module docstring): one line naming both."""
    grey = is_greyscale_file(bg_path), is_greyscale_file(fg_bg_path)
    if grey[0] != grey[1]:
        g, c = (bg_path, fg_bg_path) if grey[0] else (fg_bg_path, bg_path)
        raise BadInputError(f"{g} is greyscale but {c} is in colour: a pair is two shots of the same scene, stored the "
                            "same way; save both in colour (or both in greyscale)")


def transparent_fraction(path: str | Path) -> float:
    """The share of pixels not fully opaque: 0.0 for a file whose header shows no alpha (nothing decoded, so a phone's
    JPEG costs nothing), and for an unreadable file (read_image says why, naming it)."""
    from PIL import Image

    path = Path(path)
    try:
        if is_heif(path):
            heif_support(path)
        with Image.open(path) as im:
            if im.mode not in ALPHA_MODES and "transparency" not in im.info:
                return 0.0
            _check_pixels(path, im.width * im.height)
            alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    except Exception:
        return 0.0
    return float(np.count_nonzero(alpha < 255)) / max(alpha.size, 1)


def check_opaque(path: str | Path, role: str) -> None:
    """Refuse a photo with transparent pixels (module docstring) in one line naming it and its role (bg, fg_bg)."""
    share = transparent_fraction(path)
    if share > 0:
        pct = f"{100 * share:.1f}" if share >= 0.001 else "under 0.1"
        raise BadInputError(f"{path}: {pct} % of its pixels are transparent: the {role} must be a photo as the camera "
                            "took it, not a cut-out (a transparent part has no picture and would read as object); save "
                            "it without transparency")


def read_image(path: str | Path) -> np.ndarray:
    """A photo file -> (H, W, 3) uint8 RGB, decoded exactly as `eva build` decodes a background (`eva predict` and the
    notebooks read photos through here); every failure is a BadInputError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not an image file") from None
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_background(path, data)


def decode_cutout(path: str | Path, data: bytes) -> np.ndarray:
    """An image with transparency -> (H, W, 4) uint8 RGBA; no alpha, a fully transparent or a tiny one is an error."""
    path = Path(path)
    im = _open(path, data)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        raise BadInputError(f"{path}: cut-out has no alpha channel (mode {im.mode}); save it as a transparent PNG")
    rgba = np.ascontiguousarray(np.asarray(im.convert("RGBA"), dtype=np.uint8))
    alpha = rgba[..., 3]
    if not alpha.any():
        raise BadInputError(f"{path}: cut-out is fully transparent")
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    bh, bw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if bh < MIN_BOX or bw < MIN_BOX:
        raise BadInputError(f"{path}: cut-out's visible part is only {bw}x{bh} px (need at least {MIN_BOX}x{MIN_BOX})")
    return rgba


def load_sources(folder: str | Path, kind: str, on_bad: str = "error",
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[list[Source], Listing]:
    """List and decode every image of `folder` (kind "bg" or "fg"); bad files raise, or with on_bad="skip" are counted.

    `prepare` (e.g. crop/resize to the build size) is applied to each image as soon as it is decoded, so a folder
    of large photos never sits in memory at full resolution.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    decode = {"bg": decode_background, "fg": decode_cutout}[kind]
    listing = list_images(folder)
    sources: list[Source] = []
    for p in listing.files:
        try:
            data = p.read_bytes()
            arr = decode(p, data)
        except (BadInputError, OSError) as e:
            if on_bad == "error":
                raise e if isinstance(e, BadInputError) else BadInputError(f"{p}: cannot read ({e})") from None
            _count(listing, "bad", p.name)
            continue
        h, w = arr.shape[:2]
        sources.append(Source(id=p.stem, file=p.name, sha256=sha256_bytes(data), bytes=len(data),
                              array=prepare(arr) if prepare else arr, width=w, height=h))
    if not sources:
        raise BadInputError(f"{listing.folder}: no usable images (all {len(listing.files)} were unreadable)")
    return sources, listing
