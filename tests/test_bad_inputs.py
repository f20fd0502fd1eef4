"""Every user error through the `eva` command: exit code 2, exactly one line on stderr naming the file or flag at
fault, and nothing changed on disk (inputs byte-identical; a refused command creates and claims nothing).

Each case is one mistake a user makes (a flag out of range, a file of the wrong kind, damaged data, a full disk).
The command runs in-process (`cli.main`): an uncaught exception fails the case with its traceback.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from eva_helpers.data import formats
from eva_helpers.atomic import sha256_file
from eva_helpers.cli import main
from eva_helpers.paths import sample_assets


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
