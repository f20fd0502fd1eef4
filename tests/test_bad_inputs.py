"""Every user error through the `eva` command: exit code 2, exactly one line on stderr naming the file or flag at
fault, and nothing changed on disk (inputs byte-identical; a refused command creates and claims nothing).

Each case is one mistake a user makes (a flag out of range, a file of the wrong kind, damaged data, a full disk).
The command runs in-process (`cli.main`): an uncaught exception fails the case with its traceback.

Sections at the end (issue 28): damaged and foreign leases and a full disk at a checkpoint (test_lease.py holds the
process-level cases: a paused writer, 20 simultaneous takeovers); upper bounds of every size and count; a server that
never finishes its answer (local servers, limits patched small); and the smaller ones (stale outputs of a failed pair,
one file given twice, metrics file names, a warm start's other spelling, CSV formulas, a pair too small to align).
"""
from __future__ import annotations

import csv
import errno
import http.server
import inspect
import json
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from itertools import chain, count, repeat
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from eva_helpers.atomic import sha256_file
from eva_helpers.cli import main
from eva_helpers.cli.parser import PREDICT_BATCH, build_parser
from eva_helpers.compositing.params import BUILD_BOUNDS, check_build_bounds
from eva_helpers.data import formats
from eva_helpers.errors import EvaError, UsageError
from eva_helpers.fetching import catalogue as C
from eva_helpers.fetching import transport as T
from eva_helpers.fetching.fetch import fetch_dataset
from eva_helpers.paths import sample_assets
from eva_helpers.training.config import BOUNDS, MAX_BATCH_PIXELS, TrainConfig


@dataclass
class Env:
    """Paths a case's arguments refer to: {tmp}, {data}, {run}, {bg}, {fg}, {a}, {b} in its argv."""

    tmp: Path
    data: Path
    run: Path
    bg: Path
    fg: Path
    a: Path  # a 40x30 background photo
    b: Path  # the same photo with a square pasted on it
    fixed: dict = field(default_factory=dict)

    def fmt(self, s: str) -> str:
        return s.format(tmp=self.tmp, data=self.data, run=self.run, bg=self.bg, fg=self.fg, a=self.a, b=self.b)


@dataclass
class Case:
    id: str
    argv: str  # the command line after `eva`, with {placeholders}
    names: tuple[str, ...]  # what the one line must name (the file, folder or flag at fault), with {placeholders}
    setup: Callable[[Env, pytest.MonkeyPatch], None] | None = None
    writes: tuple[str, ...] = ()  # folders the command may leave things in (its outputs); nothing else may change


# ---------------------------------------------------------------- setups: each makes one kind of bad input

def _text(path_tpl: str, text: str = "hello, I am not an image\n"):
    def setup(env: Env, mp) -> None:
        p = Path(env.fmt(path_tpl))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return setup


def _bytes_of(path_tpl: str, data: bytes):
    def setup(env: Env, mp) -> None:
        Path(env.fmt(path_tpl)).write_bytes(data)
    return setup


def _truncate(path_tpl: str, keep: float = 0.5):
    def setup(env: Env, mp) -> None:
        p = Path(env.fmt(path_tpl))
        p.write_bytes(p.read_bytes()[:int(p.stat().st_size * keep)])
    return setup


def _own_data(env: Env, mp) -> None:
    """A private copy of the dataset at {tmp}/data, for cases that damage it."""
    shutil.copytree(env.data, env.tmp / "data")
    env.data = env.tmp / "data"


def _own_run(env: Env, mp) -> None:
    """A private copy of the trained run at {tmp}/run_copy, with a best.pt (a copy of last.pt and its sidecar)."""
    shutil.copytree(env.run, env.tmp / "run_copy")
    env.run = env.tmp / "run_copy"
    ck = env.run / "checkpoints"
    if not (ck / "best.pt").exists():
        shutil.copy(ck / "last.pt", ck / "best.pt")
        shutil.copy(ck / "last.pt.sha256", ck / "best.pt.sha256")


def _then(*steps):
    def setup(env: Env, mp) -> None:
        for s in steps:
            s(env, mp)
    return setup


def _edit_json(path_tpl: str, edit: Callable[[dict], object]):
    def setup(env: Env, mp) -> None:
        p = Path(env.fmt(path_tpl))
        doc = json.loads(p.read_text())
        p.write_text(json.dumps(edit(doc)))
    return setup


def _damage_member_consistently(env: Env, mp) -> None:
    """One depth member of shard 0 replaced by junk, the manifest fixed to match and the index rebuilt from the
    shards: only decoding the member (inside a DataLoader worker) can catch it."""
    _own_data(env, mp)
    bad = formats.member("depth", formats.sample_id(0))
    _rezip(env.data / formats.shard_name(0), lambda n, d, all_: b"not a png" if n == bad else d)
    _fix_manifest(env, formats.shard_name(0), drop_index=True)


def _rezip(path: Path, replace: Callable[[str, bytes, dict], bytes]) -> None:
    """Rewrite a zip in its member order, each member's bytes passed through `replace(name, data, all)`."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            formats.zip_write(zf, n, replace(n, data, members))


def _fix_manifest(env: Env, file: str, drop_index: bool = False) -> None:
    """Make manifest.json agree with an edited file (a consistent tamper: only content checks can catch it)."""
    m = json.loads((env.data / formats.MANIFEST).read_text())
    for e in m["shards"] + [m["backgrounds"]]:
        if e["file"] == file:
            e["sha256"], e["bytes"] = sha256_file(env.data / file), (env.data / file).stat().st_size
    if drop_index:  # the columnar index (sizes, CRCs) is rebuilt from the edited shards
        m.pop("index", None)
        (env.data / "index.npz").unlink()
    formats.write_manifest(env.data, m)


def _tamper(kind: str):
    """One kind of damage to a private copy of the dataset (issue 11: each must end in a one-line error)."""
    def setup(env: Env, mp) -> None:
        _own_data(env, mp)
        shard0, shard1 = env.data / formats.shard_name(0), env.data / formats.shard_name(1)
        if kind == "member-replaced":  # another valid image of the same size, manifest untouched
            a, b = formats.member("fg_bg", formats.sample_id(0)), formats.member("fg_bg", formats.sample_id(1))
            _rezip(shard0, lambda n, d, all_: all_[b] if n == a else d)
        elif kind == "background-swapped":
            bgz = env.data / formats.BACKGROUNDS
            with zipfile.ZipFile(bgz) as zf:
                first, second = [n for n in zf.namelist() if n.startswith("bg/")][:2]
            _rezip(bgz, lambda n, d, all_: all_[second] if n == first else d)
        elif kind == "index-edited":  # a plausible edit of a shard's index.jsonl: another existing background
            def edit(n, d, all_):
                if n != formats.INDEX:
                    return d
                rows = formats.read_jsonl(d)
                rows[0]["bg_id"] = rows[-1]["bg_id"] if rows[-1]["bg_id"] != rows[0]["bg_id"] else "coffee"
                return formats.jsonl_bytes(rows)
            _rezip(shard1, edit)
        elif kind == "wrong-sha256":
            _edit_json("{data}/manifest.json", lambda m: {**m, "shards": [m["shards"][0], {**m["shards"][1],
                       "sha256": "0" * 64}] + m["shards"][2:]})(env, mp)
        elif kind == "member-other-size":  # consistent hashes: only the shape check can tell
            bad = formats.member("mask", formats.sample_id(3))
            _rezip(shard0, lambda n, d, all_: formats.encode_mask(np.zeros((40, 40), np.uint8)) if n == bad else d)
            _fix_manifest(env, formats.shard_name(0), drop_index=True)
        elif kind == "incomplete":
            _edit_json("{data}/manifest.json", lambda m: {**m, "complete": False, "shards": m["shards"][:1]})(env, mp)
        else:
            raise ValueError(kind)
    return setup


def _oserror(target: str, err: int, filename_tpl: str):
    """Make `target` (module.attr) raise OSError(err) naming a file: a full disk, a permission refused."""
    def setup(env: Env, mp) -> None:
        name = env.fmt(filename_tpl)

        def boom(*a, **k):
            raise OSError(err, os.strerror(err), name)
        mp.setattr(target, boom)
    return setup


def _bomb(path_tpl: str):
    """A PNG whose header declares 30000 x 30000 pixels (900 Mpx) but whose data is tiny."""
    def setup(env: Env, mp) -> None:
        import struct
        import zlib

        def chunk(tag, body):
            return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
        row = b"\0" + b"\0" * 30000 * 3
        idat = zlib.compress(row * 4)  # far fewer rows than declared: a decoder must not allocate 2.7 GB
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
        Path(env.fmt(path_tpl)).write_bytes(png)
    return setup


def _bg_is_file(env: Env, mp) -> None:
    (env.tmp / "afile").write_text("x")


DM = '{"schema": "eva-data-manifest/1", "datasets": %s}'
BUILD = "build --bg {bg} --fg {fg} --out {tmp}/out --size 32 --positions 1 --workers 1 --limit 8"
TRAIN = "train --task mask --data {data} --run-dir {tmp}/newrun --size 32 --batch-size 8 --epochs 1 --max-steps 1 " \
        "--workers 0"
PREDICT = "predict --run-dir {run} --bg {a} --fg-bg {b} --out {tmp}/pred"
BIG = 65536  # px: one 3-channel image at this side is 12.9 GB
TRAIN2 = TRAIN.replace("--epochs 1", "--epochs 2")  # room for a stage: one epoch of it, the other at --size

CASES = [
    # ---- the command line itself
    Case("no-command", "", ("eva",)),
    Case("unknown-command", "bulid --bg x", ("bulid",)),
    Case("unknown-flag", BUILD + " --positons 3", ("--positons", "did you mean --positions?", "eva build --help")),
    Case("not-an-int", BUILD.replace("--size 32", "--size big"), ("--size", "big")),
    Case("scale-range-not-a-pair", BUILD + " --scale-range 0.3", ("--scale-range",)),
    Case("bad-choice", TRAIN + " --schedule cosine", ("--schedule", "cosine")),
    # ---- build: every flag range-checked before the output folder is created or claimed
    Case("build-size-0", BUILD.replace("--size 32", "--size 0"), ("size",)),
    Case("build-size-negative", BUILD.replace("--size 32", "--size -32"), ("size",)),
    Case("build-positions-0", BUILD.replace("--positions 1", "--positions 0"), ("positions",)),
    Case("build-shard-size-0", BUILD + " --shard-size 0", ("shard",)),
    Case("build-jpeg-quality-0", BUILD + " --jpeg-quality 0", ("jpeg",)),
    Case("build-jpeg-quality-101", BUILD + " --jpeg-quality 101", ("jpeg",)),
    Case("build-workers-0", BUILD.replace("--workers 1", "--workers 0"), ("workers",)),
    Case("build-workers-negative", BUILD.replace("--workers 1", "--workers -3"), ("workers",)),
    Case("build-limit-0", BUILD.replace("--limit 8", "--limit 0"), ("limit",)),
    Case("build-limit-negative", BUILD.replace("--limit 8", "--limit -5"), ("limit",)),
    Case("build-seed-negative", BUILD + " --seed -1", ("seed",)),
    Case("build-scale-range-reversed", BUILD + " --scale-range 0.8,0.2", ("scale",)),
    Case("build-scale-range-zero", BUILD + " --scale-range 0,0.5", ("scale",)),
    Case("build-scale-range-above-1", BUILD + " --scale-range 0.5,1.5", ("scale",)),
    Case("build-unknown-teacher", BUILD + " --teacher depth-anything", ("depth-anything",)),
    Case("build-teacher-input-size-0", BUILD + " --teacher-input-size 0", ("teacher",)),
    Case("build-bg-missing", BUILD.replace("{bg}", "{tmp}/nope"), ("{tmp}/nope",)),
    Case("build-bg-is-a-file", BUILD.replace("{bg}", "{tmp}/afile"), ("{tmp}/afile",), _bg_is_file),
    Case("build-out-is-a-file", BUILD.replace("{tmp}/out", "{tmp}/afile"), ("{tmp}/afile",), _bg_is_file),
    Case("build-out-under-a-file", BUILD.replace("{tmp}/out", "{tmp}/afile/out"), ("{tmp}/afile",), _bg_is_file),
    Case("build-out-inside-bg", BUILD.replace("{tmp}/out", "{bg}/out"), ("{bg}",)),
    Case("build-text-file-named-jpg", BUILD, ("{bg}/notes.jpg", "not an image"), _text("{bg}/notes.jpg")),
    Case("build-truncated-jpg", BUILD, ("{bg}/coffee.jpg",), _truncate("{bg}/coffee.jpg", 0.02)),
    Case("build-empty-cutout", BUILD, ("{fg}/empty.png",), _bytes_of("{fg}/empty.png", b"")),
    Case("build-decompression-bomb", BUILD, ("{bg}/huge.png",), _bomb("{bg}/huge.png")),
    Case("build-disk-full", BUILD, ("{tmp}/out", "space"),
         _oserror("eva_helpers.atomic.os.fsync", errno.ENOSPC, "{tmp}/out/manifest.json"), writes=("{tmp}/out",)),
    Case("build-permission-denied", BUILD, ("{tmp}/out", "permission"),
         _oserror("pathlib.Path.mkdir", errno.EACCES, "{tmp}/out")),
    # ---- fetch
    Case("fetch-unknown-name", "fetch nosuch --manifest {tmp}/dm.json --cache {tmp}/cache", ("nosuch", "dm.json"),
         _text("{tmp}/dm.json", DM % '{}')),
    Case("fetch-manifest-missing", "fetch x --manifest {tmp}/dm.json --cache {tmp}/cache", ("{tmp}/dm.json",)),
    Case("fetch-manifest-not-json", "fetch x --manifest {tmp}/dm.json --cache {tmp}/cache", ("{tmp}/dm.json",),
         _text("{tmp}/dm.json", '{"datasets": {"x": ')),
    Case("fetch-manifest-a-list", "fetch x --manifest {tmp}/dm.json --cache {tmp}/cache", ("{tmp}/dm.json",),
         _text("{tmp}/dm.json", '[1, 2, 3]')),
    Case("fetch-entry-wrong-shape", "fetch x --manifest {tmp}/dm.json --cache {tmp}/cache", ("{tmp}/dm.json",),
         _text("{tmp}/dm.json", DM % '{"x": 5}')),
    Case("fetch-name-escapes-cache", "fetch ../../escape --manifest {tmp}/dm.json --cache {tmp}/cache",
         ("../../escape",), _text("{tmp}/dm.json", DM % '{"../../escape": {}}')),
    Case("fetch-cache-is-a-file", "fetch x --manifest {tmp}/dm.json --cache {tmp}/afile", ("{tmp}/afile",),
         _then(_bg_is_file, _text("{tmp}/dm.json", DM % '{"x": {}}'))),
    # ---- stats
    Case("stats-data-missing", "stats --data {tmp}/nope", ("{tmp}/nope",)),
    Case("stats-data-is-a-file", "stats --data {tmp}/afile", ("{tmp}/afile",), _bg_is_file),
    Case("stats-folder-without-manifest", "stats --data {bg}", ("{bg}",)),
    Case("stats-manifest-not-json", "stats --data {data}", ("manifest.json",),
         _then(_own_data, _text("{data}/manifest.json", '{"schema": '))),
    Case("stats-manifest-a-list", "stats --data {data}", ("manifest.json",),
         _then(_own_data, _text("{data}/manifest.json", "[]"))),
    Case("stats-manifest-without-shards", "stats --data {data}", ("manifest.json",),
         _then(_own_data, _edit_json("{data}/manifest.json", lambda m: {k: v for k, v in m.items() if k != "shards"}))),
    Case("stats-limit-0", "stats --data {data} --limit 0", ("limit",)),
    Case("stats-limit-negative", "stats --data {data} --limit -4", ("limit",)),
    Case("stats-truncated-shard", "stats --data {data}", ("shard-00001.zip",),
         _then(_own_data, _truncate("{data}/shards/shard-00001.zip"))),
    Case("stats-shard-missing", "stats --data {data}", ("shard-00002.zip",),
         _then(_own_data, lambda env, mp: (env.data / formats.shard_name(2)).unlink())),
    Case("stats-disk-full", "stats --data {data}", ("stats.json", "space"),
         _then(_own_data, _oserror("eva_helpers.data.stats.atomic_write_text", errno.ENOSPC, "{data}/stats.json"))),
    # ---- damaged data: one case per kind of damage, each caught on the way in whatever the command
    Case("tamper-member-replaced", "stats --data {data}", ("shard-00000.zip",), _tamper("member-replaced")),
    Case("tamper-background-swapped", TRAIN, ("backgrounds.zip",), _tamper("background-swapped")),
    Case("tamper-index-jsonl-edited", "stats --data {data}", ("shard-00001.zip",), _tamper("index-edited")),
    Case("tamper-wrong-sha256-in-manifest", "eval --run-dir {run} --data {data}", ("shard-00001.zip",),
         _tamper("wrong-sha256")),
    Case("tamper-member-of-another-size", "stats --data {data}", ("shard-00000.zip", "mask/00000003.png"),
         _tamper("member-other-size")),
    Case("tamper-incomplete-build", TRAIN, ("manifest.json", "complete"), _tamper("incomplete")),
    # ---- train: the config range-checked before the run folder is created
    Case("train-epochs-0", TRAIN.replace("--epochs 1", "--epochs 0"), ("epochs",)),
    Case("train-batch-size-0", TRAIN.replace("--batch-size 8", "--batch-size 0"), ("batch",)),
    Case("train-size-0", TRAIN.replace("--size 32", "--size 0"), ("size",)),
    Case("train-size-not-multiple-of-16", TRAIN.replace("--size 32", "--size 40"), ("size",)),
    Case("train-lr-0", TRAIN + " --lr 0", ("lr",)),
    Case("train-lr-5", TRAIN + " --lr 5", ("lr",)),
    Case("train-lr-nan", TRAIN + " --lr nan", ("lr",)),
    Case("train-device-bogus", TRAIN + " --device gpu0", ("gpu0",)),
    Case("train-device-cuda-absent", TRAIN + " --device cuda:3", ("cuda:3",)),
    Case("train-workers-negative", TRAIN.replace("--workers 0", "--workers -1"), ("workers",)),
    Case("train-checkpoint-interval-negative", TRAIN + " --checkpoint-interval -5", ("checkpoint",)),
    Case("train-checkpoint-interval-nan", TRAIN + " --checkpoint-interval nan", ("checkpoint",)),
    Case("train-max-steps-0", TRAIN.replace("--max-steps 1", "--max-steps 0"), ("max_steps",)),
    Case("train-unknown-model", TRAIN + " --model unet_huge", ("unet_huge",)),
    Case("train-stem-two-with-diff-inputs", TRAIN + " --stem two --inputs diff", ("stem",)),
    Case("train-data-missing", TRAIN.replace("{data}", "{tmp}/nope"), ("{tmp}/nope",)),
    Case("train-run-dir-is-a-file", TRAIN.replace("{tmp}/newrun", "{tmp}/afile"), ("{tmp}/afile",), _bg_is_file),
    Case("train-config-not-json", TRAIN, ("config.json",), _text("{tmp}/newrun/config.json", "{")),
    Case("train-config-a-list", TRAIN, ("config.json",), _text("{tmp}/newrun/config.json", "[1]")),
    Case("train-stats-not-json", TRAIN, ("stats.json",), _then(_own_data, _text("{data}/stats.json", "{\"bg\""))),
    Case("train-stats-wrong-shape", TRAIN, ("stats.json",),
         _then(_own_data, _text("{data}/stats.json", '{"bg": {"mean": [0.5], "std": "x"}}'))),
    Case("train-member-damaged-in-worker", TRAIN.replace("--workers 0", "--workers 1").replace("--max-steps 1", ""),
         ("shard-00000.zip", "depth/00000000.png"), _damage_member_consistently, writes=("{tmp}/newrun",)),
    Case("train-disk-full", TRAIN, ("{tmp}/newrun", "space"),
         _oserror("eva_helpers.atomic.os.fsync", errno.ENOSPC, "{tmp}/newrun/config.json"), writes=("{tmp}/newrun",)),
    # ---- eval
    Case("eval-run-missing", "eval --run-dir {tmp}/nope --data {data}", ("{tmp}/nope",)),
    Case("eval-data-missing", "eval --run-dir {run} --data {tmp}/nope", ("{tmp}/nope",)),
    Case("eval-every-checkpoint-damaged", "eval --run-dir {run} --data {data} --which last", ("checkpoint", "damaged"),
         _then(_own_run, lambda env, mp: [_truncate(str(p))(env, mp) for p in (env.run / "checkpoints").glob("*.pt")])),
    Case("eval-best-damaged", "eval --run-dir {run} --data {data} --which best", ("best.pt", "--which last"),
         _then(_own_run, lambda env, mp: _truncate(str(env.run / "checkpoints" / "best.pt"))(env, mp))),
    Case("eval-best-sidecar-not-json", "eval --run-dir {run} --data {data}", ("best.pt",),
         _then(_own_run, lambda env, mp: (env.run / "checkpoints" / "best.pt.sha256").write_text("{oops"))),
    Case("eval-best-sidecar-a-list", "eval --run-dir {run} --data {data}", ("best.pt",),
         _then(_own_run, lambda env, mp: (env.run / "checkpoints" / "best.pt.sha256").write_text("[1]"))),
    Case("eval-run-stats-not-json", "eval --run-dir {run} --data {data}", ("stats.json",),
         _then(_own_run, lambda env, mp: (env.run / "stats.json").write_text('{"bg": '))),
    # ---- predict
    Case("predict-bg-missing", PREDICT.replace("{a}", "{tmp}/nope.png"), ("{tmp}/nope.png",)),
    Case("predict-bg-is-a-folder", PREDICT.replace("{a}", "{bg}"), ("{bg}",)),
    Case("predict-text-named-jpg", PREDICT.replace("{a}", "{tmp}/x.jpg"), ("{tmp}/x.jpg", "not an image"),
         _text("{tmp}/x.jpg")),
    Case("predict-truncated-png", PREDICT, ("{a}",), _truncate("{a}", 0.3)),
    Case("predict-decompression-bomb", PREDICT.replace("{b}", "{tmp}/huge.png"), ("{tmp}/huge.png",),
         _bomb("{tmp}/huge.png")),
    Case("predict-out-is-a-file", PREDICT.replace("{tmp}/pred", "{tmp}/afile"), ("{tmp}/afile",), _bg_is_file),
    Case("predict-run-missing", PREDICT.replace("{run}", "{tmp}/nope"), ("{tmp}/nope",)),
    Case("predict-calibration-not-json", PREDICT, ("calibration.json",),
         _then(_own_run, lambda env, mp: (env.run / "calibration.json").write_text("{\"threshold\": "))),
    Case("predict-batch-size-0", PREDICT + " --batch-size 0", ("--batch-size",)),
    Case("predict-folders-without-a-common-name", PREDICT.replace("{a}", "{bg}").replace("{b}", "{fg}"),
         ("{bg}", "{fg}", "no file name is in both")),
    Case("predict-out-inside-a-photo-folder",
         PREDICT.replace("{a}", "{bg}").replace("{b}", "{fg}").replace("{tmp}/pred", "{bg}/pred"),
         ("{bg}/pred", "inside the input folder"), lambda env, mp: shutil.copy(env.a, env.fg / "coffee.png")),
    # ---- demo
    Case("demo-minutes-0", "demo --out {tmp}/demo --minutes 0", ("minutes",)),
    Case("demo-minutes-negative", "demo --out {tmp}/demo --minutes -1", ("minutes",)),
    Case("demo-out-is-a-file", "demo --out {tmp}/afile", ("{tmp}/afile",), _bg_is_file),
    # ---- issue 28: every size and count has an upper bound, checked before anything is written
    # ---- train: the sizes a model takes, and the counts of a run
    Case("train-size-stages-65536", TRAIN2 + f" --size-stages {BIG}:1", ("--size-stages", f"{BIG}", "to 2048")),
    Case("train-size-stage-epochs", TRAIN2 + " --size-stages 32:20000", ("--size-stages", "20000", "to 10000")),
    Case("train-size-65536", TRAIN.replace("--size 32", f"--size {BIG}"), ("--size", f"{BIG}", "to 2048")),
    Case("train-epochs-1e6", TRAIN.replace("--epochs 1", "--epochs 1000000"), ("--epochs", "1000000", "to 10000")),
    Case("train-batch-size-5000", TRAIN.replace("--batch-size 8", "--batch-size 5000"), ("--batch-size", "5000", "to 4096")),
    Case("train-batch-pixels", TRAIN.replace("--batch-size 8", "--batch-size 4096").replace("--size 32", "--size 256"),
         ("batch_size=4096", "size=256", f"more than {MAX_BATCH_PIXELS:,}")),
    Case("train-seed-2**32", TRAIN + " --seed 4294967296", ("--seed", "4294967296", "to 4294967295")),
    Case("train-seed-2**64", TRAIN + f" --seed {2**64}", ("--seed", f"{2**64}", "to 4294967295")),
    Case("train-max-steps-1e10", TRAIN.replace("--max-steps 1", "--max-steps 10000000000"),
         ("--max-steps", "10000000000", "to 1000000000")),
    Case("train-workers-100000", TRAIN.replace("--workers 0", "--workers 100000"), ("--workers", "100000", "to 64")),
    # ---- build
    Case("build-size-65536", BUILD.replace("--size 32", f"--size {BIG}"), ("--size", f"{BIG}", "to 4096")),
    Case("build-positions-100000", BUILD.replace("--positions 1", "--positions 100000"),
         ("--positions", "100000", "to 10000")),
    Case("build-seed-2**32", BUILD + " --seed 4294967296", ("--seed", "4294967296", "to 4294967295")),
    Case("build-shard-size-1e6", BUILD + " --shard-size 1000000", ("--shard-size", "1000000", "to 10000")),
    Case("build-workers-1000", BUILD.replace("--workers 1", "--workers 1000"), ("--workers", "1000", "to 64")),
    Case("build-limit-1e10", BUILD.replace("--limit 8", "--limit 10000000000"), ("--limit", "10000000000", "to 1000000000")),
    Case("build-teacher-input-size-65536", BUILD + f" --teacher-input-size {BIG}",
         ("--teacher-input-size", f"{BIG}", "to 4096")),
    # ---- stats, predict, demo
    Case("stats-limit-1e10", "stats --data {data} --limit 10000000000", ("limit", "10000000000", "to 1000000000")),
    Case("predict-batch-size-100000", PREDICT + " --batch-size 100000", ("--batch-size", "100000", "to 1024")),
    Case("demo-minutes-1e6", "demo --out {tmp}/demo --minutes 1000000", ("minutes", "1000000", "to 1440")),
    Case("demo-seed-2**32", "demo --out {tmp}/demo --seed 4294967296", ("--seed", "4294967296", "to 4294967295")),
]


TQDM_BAR = re.compile(r"\d+%\|")


def _state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def env(tmp_path, sample_dataset, trained_run, monkeypatch) -> Env:
    monkeypatch.setenv("EVA_CACHE", str(tmp_path.parent / (tmp_path.name + "-cache")))
    work = tmp_path / "w"
    bg, fg = work / "bg", work / "fg"
    bg.mkdir(parents=True)
    fg.mkdir()
    for name in ("coffee", "aitzgorri"):
        shutil.copy(sample_assets() / "bg" / f"{name}.jpg", bg)
    for name in ("penguin", "zebra"):
        shutil.copy(sample_assets() / "fg" / f"{name}.png", fg)
    photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(work / "a.png")
    photo[8:20, 10:22] = 255
    Image.fromarray(photo).save(work / "b.png")
    return Env(tmp=work, data=sample_dataset, run=trained_run, bg=bg, fg=fg, a=work / "a.png", b=work / "b.png")


# A DataLoader worker fails: the abandoned loader's shutdown waits 5 s for its worker when garbage-collected.
SLOW_CASES = {"train-member-damaged-in-worker"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW_CASES else c for c in CASES],
                         ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, env: Env, monkeypatch, capsys):
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    if case.setup:
        case.setup(env, monkeypatch)
    roots = {env.tmp, env.data, env.run}
    before = {r: _state(r) for r in roots}
    capsys.readouterr()
    rc = main(env.fmt(case.argv).split())
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and not TQDM_BAR.search(ln)]  # progress bars: not messages
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    for name in case.names:
        assert env.fmt(name) in lines[0], f"{env.fmt(name)!r} not named in: {lines[0]}"
    assert "Traceback" not in err and "<_io." not in err
    monkeypatch.undo()  # the OSError fakes off, before reading the disk back
    allowed = tuple(env.fmt(w) for w in case.writes)
    for r in roots:
        after = _state(r)
        changed = {k for k in set(before[r]) | set(after) if before[r].get(k) != after.get(k)}
        changed = {k for k in changed if not str(r / k).startswith(allowed)}
        assert not changed, f"{r}: changed by a refused command: {sorted(changed)[:5]}"


def test_a_mistyped_flag_claims_nothing_so_the_corrected_command_runs(env, capsys):
    """Issue 11: a mistyped flag used to claim the output folder, and the corrected command was then refused as "a
    build with different parameters"."""
    for typo in ("--positions 0", "--teacher depth-anything", "--scale-range 0.8,0.2", "--jpeg-quality 0"):
        assert main(env.fmt(BUILD + " " + typo).split()) == 2
        assert not (env.tmp / "out").exists(), typo
    capsys.readouterr()
    assert main(env.fmt(BUILD).split()) == 0
    assert formats.read_manifest(env.tmp / "out")["complete"] is True


def test_on_bad_skip_says_how_many_files_it_skipped(env, capsys):
    (env.bg / "notes.jpg").write_text("not an image")
    assert main(env.fmt(BUILD + " --on-bad skip").split()) == 0
    err = capsys.readouterr().err
    assert f"skipped 1 unreadable file(s) in {env.bg}" in err and "manifest.json" in err
    assert formats.read_manifest(env.tmp / "out")["skipped"]["bg"] == ["notes.jpg"]


def test_a_damaged_history_file_is_a_warning_not_a_traceback(env, monkeypatch, capsys):
    """history.jsonl is a readable copy of the checkpoint's history: eval scores the run anyway and says so."""
    _own_run(env, monkeypatch)
    with open(env.run / "history.jsonl", "a") as f:
        f.write('{"epoch": 9, "samples_per\n[1, 2]\n')
    with pytest.warns(UserWarning, match=r"history.jsonl: 2 damaged line\(s\) skipped"):
        assert main(env.fmt("eval --run-dir {run} --data {data} --which last").split()) == 0
    assert json.loads((env.run / "metrics.json").read_text())["checkpoint_file"] == "last.pt"


def test_notebook_cells_print_the_same_one_line(capsys):
    """session.start()'s IPython handler shows what the CLI shows: a worker's error unwrapped, an OSError's file."""
    from eva_helpers.errors import IntegrityError
    from eva_helpers.colab.session import _one_line_error

    wrapped = IntegrityError("Caught IntegrityError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File \"x.py\", line 1, in f\neva_helpers.errors.IntegrityError: "
                             "/d/shards/shard-00000.zip: member 'mask/00000003.png' is 40x40")
    _one_line_error(None, IntegrityError, wrapped, None)
    _one_line_error(None, OSError, OSError(errno.ENOSPC, "No space left on device", "/d/run/last.pt"), None)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: /d/shards/shard-00000.zip: member 'mask/00000003.png' is 40x40",
                     "error: /d/run/last.pt: the disk is full: free some space or choose another folder, then run "
                     "the same command again"]


# ---------------------------------------------------------------- issue 28: leases, a full disk

@pytest.mark.parametrize("kind", ["heartbeat-null", "heartbeat-yesterday", "heartbeat-nan", "heartbeat-infinity",
                                  "pid-abc", "started-1e20"])
def test_a_damaged_lease_is_one_line_and_the_folder_is_not_locked(env, capsys, kind):
    """These gave a traceback naming no file, and the folder stayed locked; now the lease is stale, said in one line."""
    from test_lease import write_damaged_lease

    path = write_damaged_lease(env.tmp / "newrun", kind)
    assert main(env.fmt(TRAIN).split()) == 0
    err = capsys.readouterr().err
    named = [ln for ln in err.splitlines() if str(path) in ln]
    assert len(named) == 1 and "damaged" in named[0] and "Traceback" not in err, err
    assert not path.exists()  # released at the end: the next command finds the folder free


def test_another_machines_live_lease_is_refused_after_watching_it_beat(env, capsys, monkeypatch):
    """A host whose clock runs 200 s behind but whose heartbeat counter moves keeps its folder: one line, nothing
    written (its clock is never compared with ours)."""
    import threading

    from test_lease import _beating, write_lease

    from eva_helpers import lease

    monkeypatch.setattr(lease, "STALE_S", 2.0)
    run = env.tmp / "newrun"
    write_lease(run, host="another-runtime", pid=321, heartbeat=1e9)
    stop = threading.Event()
    beat = threading.Thread(target=_beating, args=(run, stop), daemon=True,
                            kwargs={"host": "another-runtime", "pid": 321, "heartbeat": 1e9})
    beat.start()
    try:
        assert main(env.fmt(TRAIN).split()) == 2
    finally:
        stop.set()
        beat.join()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not TQDM_BAR.search(ln)
             and "left before taking over" not in ln]
    assert len(lines) == 1 and "host another-runtime, pid 321" in lines[0] and "alive" in lines[0], lines
    assert sorted(p.name for p in run.iterdir()) == [lease.LEASE_NAME]


def test_a_full_disk_at_a_checkpoint_names_the_folder_and_leaves_no_temp_file(env, capsys, monkeypatch):
    """Training on a disk that fills said "the disk is full" without the folder and left
    checkpoints/.eva-tmp-last.pt.new behind, keeping the disk at 100 %."""
    import types

    from eva_helpers.training import checkpoint

    def full(fin, fout, length=0):
        fout.write(b"x" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "shutil", types.SimpleNamespace(copyfileobj=full))
    assert main(env.fmt(TRAIN).split()) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not TQDM_BAR.search(ln)]
    folder = env.tmp / "newrun" / "checkpoints"
    assert len(lines) == 1 and str(folder) in lines[0] and "full" in lines[0], lines
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".eva-tmp-")]


def test_force_takeover_takes_a_silent_machines_run_folder_at_once(env, capsys, monkeypatch):
    """After a disconnect the old runtime's lease is watched for STALE_S (a countdown); --force-takeover (the notebooks'
    FORCE_TAKEOVER) skips the wait for a runtime the user knows is gone."""
    import time

    from test_lease import write_lease

    from eva_helpers import lease

    monkeypatch.setattr(lease, "STALE_S", 600.0)
    write_lease(env.tmp / "newrun", host="old-runtime", pid=321)
    t0 = time.monotonic()
    assert main(env.fmt(TRAIN + " --force-takeover").split()) == 0
    assert time.monotonic() - t0 < 120
    err = capsys.readouterr().err
    assert "taking over from the previous training (host old-runtime, pid 321" in err and "--force-takeover" in err


# ---------------------------------------------------------------- issue 28: bounded inputs

def _refused(env: Env, argv: str, names: tuple[str, ...], capsys) -> str:
    """Run `eva argv`: exit 2, one line on stderr naming each of `names`, and nothing changed on disk."""
    roots = (env.tmp, env.data, env.run)
    before = {r: _state(r) for r in roots}
    capsys.readouterr()
    rc = main(env.fmt(argv).split())
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not TQDM_BAR.search(ln)]
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    for name in names:
        assert env.fmt(name) in lines[0], f"{env.fmt(name)!r} not named in: {lines[0]}"
    assert "Traceback" not in err
    for r in roots:
        assert _state(r) == before[r], f"{r}: changed by a refused command"
    return lines[0]


def test_size_stages_65536_writes_nothing_so_the_corrected_command_runs(env: Env, capsys):
    """The issue's report: the refused command must not leave a run folder whose config the corrected one differs from."""
    _refused(env, TRAIN2 + f" --size-stages {BIG}:1", ("--size-stages", f"{BIG}", "to 2048"), capsys)
    assert not (env.tmp / "newrun").exists()
    assert main(env.fmt(TRAIN2 + " --size-stages 32:1").split()) == 0, capsys.readouterr().err
    assert (env.tmp / "newrun" / "checkpoints" / "last.pt").is_file()


# ---- each flag's bound is exactly its table's: the highest value parses, one more is refused naming the flag

TRAIN_FLAGS = {"--epochs": "epochs", "--batch-size": "batch_size", "--size": "size", "--seed": "seed",
               "--max-steps": "max_steps", "--workers": "workers"}
BUILD_FLAGS = {"--size": "size", "--positions": "positions", "--seed": "seed", "--shard-size": "shard_size",
               "--jpeg-quality": "jpeg_quality", "--workers": "workers", "--limit": "limit",
               "--teacher-input-size": "teacher_input_size"}
TRAIN_ARGS = ["train", "--task", "mask", "--data", "d", "--run-dir", "r"]
BUILD_ARGS = ["build", "--bg", "b", "--fg", "f", "--out", "o"]


@pytest.mark.parametrize("command,flag,hi", [("train", f, BOUNDS[n][1]) for f, n in TRAIN_FLAGS.items()]
                         + [("build", f, BUILD_BOUNDS[n][1]) for f, n in BUILD_FLAGS.items()]
                         + [("predict", "--batch-size", PREDICT_BATCH[1])])
def test_each_flag_takes_its_highest_value_and_refuses_one_more(command, flag, hi):
    base = {"train": TRAIN_ARGS, "build": BUILD_ARGS,
            "predict": ["predict", "--run-dir", "r", "--bg", "a", "--fg-bg", "b", "--out", "o"]}[command]
    args = build_parser().parse_args(base + [flag, str(hi)])
    assert getattr(args, flag[2:].replace("-", "_")) == hi
    with pytest.raises(UsageError, match=rf"^argument {flag}: .*{hi + 1}.* {hi}\b"):
        build_parser().parse_args(base + [flag, str(hi + 1)])


def test_every_train_bound_is_checked_by_the_config():
    """The notebooks and the Python API build TrainConfig directly: the same table applies there."""
    for name, (lo, hi, why) in BOUNDS.items():
        TrainConfig(**({name: hi, "size": 32} if name != "size" else {"size": hi, "batch_size": 1}))
        with pytest.raises(EvaError) as e:
            TrainConfig(**{name: hi + 1})
        assert f"{name}={hi + 1}" in str(e.value) and str(hi) in str(e.value) and why in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(EvaError, match=f"size_stages size={BIG} is not valid: give a whole number from 8 to 2048"):
        TrainConfig(epochs=2, size=32, size_stages=[[BIG, 1]])


def test_every_build_bound_is_checked_before_the_build():
    for name, (lo, hi, why) in BUILD_BOUNDS.items():
        check_build_bounds(**{name: hi})
        with pytest.raises(EvaError, match=rf"^build option {name}={hi + 1}: give a whole number from {lo} to {hi}"):
            check_build_bounds(**{name: hi + 1})


# ---- the notebooks' parameters: refused in the cell that takes them, before anything is written

def test_notebook_train_size_65536_is_refused_before_anything(tmp_path, sample_dataset):
    from eva_helpers.colab import notebook_train as nt
    from eva_helpers.colab.runs import notebook_config

    paths = SimpleNamespace(runs=tmp_path / "runs")
    with pytest.raises(EvaError, match=rf"^size={BIG} is not valid: give a whole number from 8 to 2048 \(") as e:
        notebook_config("mask", sample_dataset, paths, size=BIG)
    assert "\n" not in str(e.value)
    with pytest.raises(EvaError, match=f"size_stages size={BIG}"):
        notebook_config("mask", sample_dataset, paths, epochs=2, size=32, size_stages=f"{BIG}:1")
    cfg = notebook_config("mask", sample_dataset, paths, epochs=1, size=32, batch_size=8)
    cfg.size = BIG  # a later cell changes a field: the train cell checks again before its estimate allocates
    with pytest.raises(EvaError, match=f"size={BIG}"):
        nt.train(cfg)
    with pytest.raises(EvaError, match=f"size={BIG}"):
        nt.show_model(cfg)
    assert not any(tmp_path.iterdir())


def test_notebook_build_and_explore_parameters_are_refused_before_anything(tmp_path, sample_dataset):
    from eva_helpers.colab import notebook as nb

    paths = SimpleNamespace(data=tmp_path / "data", root=tmp_path)
    for kw, name in (({"size": BIG}, "size"), ({"positions": 10**6}, "positions"), ({"seed": 2**32}, "seed"),
                     ({"shard_size": 10**6}, "shard_size")):
        with pytest.raises(EvaError, match=rf"^build option {name}="):
            nb.build_plan(paths, teacher="geometric", **kw)  # before the estimate, which builds a few composites
    assert not any(tmp_path.iterdir())
    with pytest.raises(EvaError, match=f"size={BIG}"):
        nb.show_augmentation(sample_dataset, BIG)
    with pytest.raises(EvaError, match="seed=4294967296"):
        nb.show_splits(sample_dataset, seed=2**32)
    with pytest.raises(EvaError, match="limit=10000000000"):
        nb.explore_stats(sample_dataset, 10**10)


def test_demo_checks_its_trainings_before_the_build(tmp_path):
    from eva_helpers.demo import run_demo

    with pytest.raises(EvaError, match="minutes=1000000 is not valid: .* up to 1440"):
        run_demo(tmp_path / "demo", minutes=10**6)
    with pytest.raises(EvaError, match="batch_size=5000"):
        run_demo(tmp_path / "demo", batch_size=5000)
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------- issue 28: a server that never finishes

DRIBBLE_S = 0.3  # the server's pause between bytes (or header lines)
SERVER_GIVES_UP_S = 8.0  # without the limits a case then fails on its timeout instead of hanging the suite
STATUS = b"HTTP/1.1 200 OK\r\n"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Handler(http.server.BaseHTTPRequestHandler):
    log: list

    def log_message(self, *a):
        pass

    def do_GET(self):
        kind = self.path.strip("/").split("/")[0]
        self.log.append(kind)
        self.close_connection = True
        until = time.monotonic() + SERVER_GIVES_UP_S
        try:
            if kind == "slow-status":  # the status line itself a byte at a time, then a header that never ends
                self._dribble(chain((STATUS[i:i + 1] for i in range(len(STATUS))), repeat(b"X")), until)
            elif kind == "slow-header":  # a status line, then one header a byte at a time
                self.wfile.write(STATUS + b"Content-Type: application/octet-stream\r\nX-Slow: ")
                self._dribble(repeat(b"a"), until)
            elif kind == "endless-headers":  # a new header line every DRIBBLE_S, never the blank line
                self.wfile.write(STATUS)
                self._dribble((b"X-Line-%d: x\r\n" % i for i in count()), until)
            elif kind == "many-headers":  # header lines as fast as the socket takes them
                self.wfile.write(STATUS)
                while time.monotonic() < until:
                    self.wfile.write(b"X-Line: x\r\n" * 100)
            elif kind == "slow-body":  # a proper head, then a body below the speed floor
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self._dribble(repeat(b"x"), until)
        except OSError:  # the client hung up
            pass

    def _dribble(self, pieces, until: float) -> None:
        for piece in pieces:
            if time.monotonic() > until:
                return
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(DRIBBLE_S)


@pytest.fixture()
def server():
    log: list = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"log": log}))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def small_limits(monkeypatch):
    """The real limits scaled down about thirty times: same shape, seconds instead of minutes."""
    monkeypatch.setattr(T, "HEADERS_DEADLINE_S", 1.0)
    monkeypatch.setattr(T, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(T, "SPEED_WINDOW_S", 2.0)
    monkeypatch.setattr(T, "MIN_SPEED", 1000)


def _cli_defaults() -> tuple[int, float]:
    """The retries and backoff `eva fetch` runs with (it passes none of its own)."""
    params = inspect.signature(fetch_dataset).parameters
    return params["retries"].default, params["backoff"].default


def _data_manifest(tmp_path, url: str):
    dm = tmp_path / "dm.json"
    spec = {"file": "manifest.json", "sha256": "0" * 64, "bytes": 100_000, "source": {"url": f"{url}/manifest.json"}}
    shard = {"file": "shards/shard-00000.zip", "sha256": "0" * 64, "bytes": 10,
             "source": {"url": f"{url}/shard-00000.zip"}}
    C.save_entry("slow", {"dataset_manifest": spec, "shards": [shard]}, dm)
    return dm


@pytest.mark.slow  # each waits out a deadline
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["slow-status", "slow-header", "endless-headers", "many-headers", "slow-body"])
def test_a_server_that_never_finishes_ends_eva_fetch_in_one_line(kind, server, small_limits, tmp_path, capsys):
    url, _ = server
    dm, cache = _data_manifest(tmp_path, f"{url}/{kind}"), tmp_path / "cache"
    capsys.readouterr()
    t0 = time.monotonic()
    rc = main(["fetch", "slow", "--manifest", str(dm), "--cache", str(cache)])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    # progress bars are not messages, nor the cursor moves that clear them
    lines = [ln for ln in err.splitlines() if ANSI.sub("", ln).strip() and "%|" not in ln]
    assert rc == 2, err
    assert took < T.worst_case_s(*_cli_defaults()) + 1.5, f"{took:.1f} s"
    assert len(lines) == 1, err
    assert f"{url}/{kind}/manifest.json" in lines[0] and "manifest.json:" in lines[0], lines[0]
    assert "again later" in lines[0] and "by hand" in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (cache / "slow" / "manifest.json").exists()
    leftovers = sorted(p.name for p in cache.rglob("*.part"))
    # a head never completed writes nothing; a slow body keeps its bytes in the .part, for the next fetch to resume
    assert leftovers == (["manifest.json.part"] if kind == "slow-body" else [])


@pytest.mark.slow  # waits out the deadline twice
@pytest.mark.timeout(60)
def test_each_try_gets_the_head_deadline_then_is_retried(server, monkeypatch, tmp_path):
    """Within the speed floor's window, a try whose head is late is cut at HEADERS_DEADLINE_S and tried again."""
    url, log = server
    monkeypatch.setattr(T, "HEADERS_DEADLINE_S", 0.5)
    spec = {"file": "data.bin", "sha256": "0" * 64, "bytes": 100, "source": {"url": f"{url}/slow-header/data.bin"}}
    t0 = time.monotonic()
    with pytest.raises(C.FetchError) as e:
        T.fetch_file(spec, tmp_path / "data.bin", retries=2, backoff=0, progress=False)
    took = time.monotonic() - t0
    assert 3 * 0.5 <= took < 3 * 0.5 + 2, f"{took:.1f} s"
    assert log == ["slow-header"] * 3
    msg = str(e.value)
    assert msg.startswith(f"data.bin: {url}/slow-header/data.bin failed after 3 tries") and "\n" not in msg
    assert "(last: no status line and headers within 0.5 s)" in msg, msg
    assert list(tmp_path.iterdir()) == []


def test_the_real_limits_end_any_failing_fetch_within_two_minutes():
    """The arithmetic of the bound, with the shipped constants and the CLI's retries and backoff."""
    assert 0 < T.HEADERS_DEADLINE_S <= 60 and T.HEADERS_DEADLINE_S <= T.SPEED_WINDOW_S
    retries, backoff = _cli_defaults()
    bound = T.worst_case_s(retries, backoff)
    assert bound == T.SPEED_WINDOW_S + max(T.READ_TIMEOUT_S, backoff * 2 ** (retries - 1))
    assert bound <= 120, bound


# ---------------------------------------------------------------- issue 28: the smaller ones

def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _pair(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A textured (bg, fg_bg) pair with a square pasted on fg_bg."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    fg = bg.copy()
    fg[size // 4: size // 2, size // 4: size // 2] = (230, 40, 40)
    return bg, fg


def _shoot(root: Path, names: list[str], size: int = 32) -> tuple[Path, Path]:
    bg_dir, fg_dir = root / "bg", root / "fg_bg"
    bg_dir.mkdir(parents=True)
    fg_dir.mkdir()
    for i, name in enumerate(names):
        bg, fg = _pair(i, size)
        Image.fromarray(bg).save(bg_dir / f"{name}.png")
        Image.fromarray(fg).save(fg_dir / f"{name}.png")
    return bg_dir, fg_dir


def _predict(*args) -> int:
    return main(["predict", *map(str, args)])


# --- 1. a pair that fails now keeps no output of an earlier run ------------------------------------------------------

def test_a_pair_failing_now_loses_the_outputs_an_earlier_run_left(tmp_path, trained_run, capsys):
    bg_dir, fg_dir = _shoot(tmp_path, ["alpha", "beta", "gamma"])
    out = tmp_path / "out"
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 0
    assert all((out / f"{n}_{k}.png").is_file() for n in ("alpha", "beta", "gamma") for k in ("mask", "depth"))
    (out / "beta_notes.txt").write_text("mine")  # not an output name of ours: left alone
    data = (fg_dir / "beta.png").read_bytes()
    (fg_dir / "beta.png").write_bytes(data[: len(data) // 3])  # truncated: beta fails this time
    (fg_dir / "gamma.png").unlink()  # gamma has no partner this time
    capsys.readouterr()
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 2
    rows = _csv(out / "alignment.csv")
    assert rows["alpha"]["status"] == "ok" and rows["beta"]["status"] != "ok"
    assert rows["gamma"]["status"] == "no partner in --fg-bg"
    assert (out / "alpha_mask.png").is_file() and (out / "alpha_depth.png").is_file()
    assert not list(out.glob("beta_*.png")) and not list(out.glob("gamma_*.png"))
    assert (out / "beta_notes.txt").read_text() == "mine"


# --- 2. --bg and --fg-bg naming one file or folder -------------------------------------------------------------------

def test_the_same_file_or_folder_twice_is_refused_in_one_line(tmp_path, trained_run, capsys, monkeypatch):
    bg_dir, fg_dir = _shoot(tmp_path / "shoot", ["alpha"])
    (tmp_path / "link_dir").symlink_to(bg_dir, target_is_directory=True)
    (tmp_path / "link.png").symlink_to(bg_dir / "alpha.png")
    monkeypatch.chdir(tmp_path)
    cases = [
        (bg_dir, tmp_path / "link_dir"),  # one folder, through a symlink
        (bg_dir, Path("shoot/bg/.")),  # one folder, relative
        (bg_dir / "alpha.png", tmp_path / "link.png"),  # one file, through a symlink
        (Path("shoot/bg/alpha.png"), Path("./shoot/bg/../bg/alpha.png")),  # one file, two spellings
    ]
    for bg, fg in cases:
        before = _state(tmp_path)
        assert _predict("--run-dir", trained_run, "--bg", bg, "--fg-bg", fg, "--out", tmp_path / "out") == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(bg) in lines[0] and str(fg) in lines[0] and "same" in lines[0], err
        assert _state(tmp_path) == before  # nothing written


# --- 3. metrics files that cannot collide ----------------------------------------------------------------------------

def test_no_dataset_folder_name_can_take_a_perturbations_metrics_file(tmp_path, monkeypatch):
    from eva_helpers.evaluation.heldout import UNSEEN_PREFIX, metrics_name, unseen_tag
    from eva_helpers.evaluation.perturb import PERTURBATIONS
    from eva_helpers.training.run_folder import metrics_file

    standard = {metrics_name(p, a) for p in [None, *PERTURBATIONS] for a in (False, True)}
    assert not any(p.startswith(UNSEEN_PREFIX) for p in PERTURBATIONS)
    ident = "ab" * 32
    for name in ["jpeg40", "clean", "noise8-aligned", "photo-64px"]:
        folder = tmp_path / name
        folder.mkdir()
        assert metrics_file(unseen_tag(folder, ident)) not in standard
        assert metrics_file(unseen_tag(folder, ident, "jpeg40")) not in standard
    monkeypatch.chdir(tmp_path / "jpeg40")
    assert unseen_tag(".", ident) == unseen_tag(tmp_path / "jpeg40", ident) == f"data-jpeg40-{ident[:8]}"
    assert unseen_tag(tmp_path / "jpeg40", ident) != unseen_tag(tmp_path / "jpeg40", "cd" * 32)  # another dataset


@pytest.mark.slow  # builds an unseen dataset and scores it three times
def test_an_unseen_dataset_named_jpeg40_or_dot_keeps_its_own_file(tmp_path, trained_run, sample_dataset, monkeypatch):
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.paths import sample_assets
    from eva_helpers.training.trained_run import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ids = load_run(run)[1].splits(sample_dataset)["info"]["bg_ids"]
    bg = tmp_path / "held-bg"
    bg.mkdir()
    for p in (sample_assets() / "bg").iterdir():
        if p.stem in ids["val"] + ids["test"]:
            shutil.copy(p, bg / p.name)
    unseen = tmp_path / "jpeg40"
    build_dataset(bg, sample_assets() / "fg", unseen, size=32, positions=1, seed=1, shard_size=128, workers=1,
                  progress=False)
    perturbed = evaluate_run(run, sample_dataset, perturb="jpeg40", figure=False, progress=False)
    saved = (run / "metrics-jpeg40.json").read_bytes()
    other = evaluate_run(run, unseen, progress=False)
    assert (run / "metrics-jpeg40.json").read_bytes() == saved
    assert json.loads(saved)["n_images"] == perturbed["n_images"]
    ident = other["dataset"]["identity"]
    mine = run / f"metrics-data-jpeg40-{ident[:8]}.json"
    assert json.loads(mine.read_text())["dataset"]["path"] == str(unseen.resolve())
    assert (run / f"eval_best_worst-data-jpeg40-{ident[:8]}.png").is_file()
    assert not (run / "eval_best_worst-jpeg40.png").exists()
    mine.unlink()
    monkeypatch.chdir(unseen)
    evaluate_run(run, ".", figure=False, progress=False)
    assert mine.is_file() and not (run / "metrics-.json").exists()


# --- 4. a warm start resumed by another spelling of its source -------------------------------------------------------

def test_a_warm_started_run_resumes_with_its_source_spelled_another_way(tmp_path, trained_run, sample_dataset,
                                                                       monkeypatch, one_thread):
    from eva_helpers.errors import EvaError
    from eva_helpers.training.config import TrainConfig, result_changing_differences
    from eva_helpers.training.trainer import fit

    def cfg(init_from: str) -> TrainConfig:
        return TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(tmp_path / "new"), model="unet_small",
                           epochs=1, batch_size=16, size=32, seed=0, workers=0, max_steps=2, progress=False,
                           init_from=init_from)

    monkeypatch.chdir(trained_run.parent)
    name = trained_run.name
    first = fit(cfg(name))
    for spelling in (f"./{name}", str(trained_run), str(trained_run.parent / "." / name) + "/"):
        assert fit(cfg(spelling))["global_step"] == first["global_step"], spelling
    with pytest.raises(EvaError, match="other settings"):
        fit(cfg("some-other-run"))
    assert result_changing_differences({"init_from": name}, {"init_from": "some-other-run"}) == ["init_from"]


# --- 5. what running a stopped command again does --------------------------------------------------------------------

@pytest.mark.parametrize("command, args, words", [
    ("predict", ["--run-dir", "r", "--bg", "a.png", "--fg-bg", "b.png", "--out", "o"], "predicts every pair"),
    ("eval", ["--run-dir", "r", "--data", "d"], "scores every image"),
])
def test_a_stopped_predict_or_eval_does_not_promise_a_resume(command, args, words, monkeypatch, capsys):
    from eva_helpers.cli import commands

    def stopped(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, f"cmd_{command}", stopped)
    assert main([command, *args]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"eva {command}: stopped by SIGINT") and "resume" not in err.replace("nothing resumes", "")
    assert words in err and "from the start" in err


def test_a_stopped_build_still_says_it_resumes(monkeypatch, capsys):
    from eva_helpers.cli import commands

    def stopped(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_build", stopped)
    assert main(["build", "--bg", "b", "--fg", "f", "--out", "o"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


# --- 6. CSV cells a spreadsheet would run as a formula ---------------------------------------------------------------

def test_csv_cells_that_start_a_formula_are_escaped(tmp_path, trained_run, capsys):
    names = ["=HYPERLINK(x)", "+cmd", "-cmd", "@SUM(A1)", "plain"]
    bg_dir, fg_dir = _shoot(tmp_path, names)
    Image.fromarray(_pair(9)[0]).save(bg_dir / "=lonely.png")
    out = tmp_path / "out"
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 0
    rows = _csv(out / "alignment.csv")
    for n in names[:4]:
        r = rows["'" + n]
        assert r["bg_file"] == r["fg_bg_file"] == f"'{n}.png" and r["status"] == "ok"
        assert (out / f"{n}_mask.png").is_file()  # the files keep their names; only the CSV cells are escaped
    assert rows["plain"]["bg_file"] == "plain.png" and rows["'=lonely"]["bg_file"] == "'=lonely.png"
    raw = (out / "alignment.csv").read_text()
    assert not any(cell.startswith(("=", "+", "@")) for line in raw.splitlines() for cell in line.split(","))


def test_numbers_stay_numbers_in_csv_cells():
    from eva_helpers.predict.folders import csv_cell

    assert csv_cell(-3.5) == -3.5 and csv_cell("-3.5") == "-3.5" and csv_cell("ok") == "ok"
    assert csv_cell("\t=1") == "'\t=1" and csv_cell("-1+2|cmd") == "'-1+2|cmd"


# --- 7. a pair too small to align ------------------------------------------------------------------------------------

def test_a_pair_too_small_to_align_is_named_with_no_align_offered(tmp_path, trained_run, capsys):
    bg_dir, fg_dir = _shoot(tmp_path, ["tiny"], size=8)
    bg, fg = bg_dir / "tiny.png", fg_dir / "tiny.png"
    assert _predict("--run-dir", trained_run, "--bg", bg, "--fg-bg", fg, "--out", tmp_path / "one") == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "--no-align" in ln]
    assert len(said) == 1 and str(bg) in said[0] and str(fg) in said[0] and "too small to align" in said[0]
    assert _predict("--run-dir", trained_run, "--bg", bg, "--fg-bg", fg, "--out", tmp_path / "two", "--no-align") == 0
    assert "--no-align" not in capsys.readouterr().err  # turned off on purpose: nothing to offer
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", tmp_path / "dir") == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "--no-align" in ln]
    assert len(said) == 1 and "tiny.png + tiny.png" in said[0] and "1 pair" in said[0]
