"""`eva predict BG_DIR FG_DIR OUT`: the photos of a whole shoot, paired by name, by order or by a CSV of pairs
(pairing.py), each predicted as `predict_pair` would.

The model is loaded once and whole pairs (read, align, model, write) run side by side in a pool of threads, each pair
on its own (predict.py says why a batch would change the masks). A pair that cannot be read is reported and skipped,
and the outputs an earlier run left for it in OUT are removed, so no old mask sits beside a row saying it failed;
`alignment.csv` says what alignment did to every pair, and the summary line counts it. Its text cells that a
spreadsheet would run as a formula (a file named `=cmd.jpg`) are written with a leading `'` (OWASP's CSV advice).
"""
from __future__ import annotations

import csv
import io
import math
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from eva_helpers.atomic import atomic_write_bytes, atomic_write_text, check_output_folder
from eva_helpers.data.formats import encode_mask
from eva_helpers.errors import BadInputError, EvaError, user_message
from eva_helpers.predict.align import could_not_align
from eva_helpers.predict.pair import (
    check_pair_files,
    check_two_inputs,
    encode_depth_png,
    load_photo,
    not_aligned,
    one_frame,
    predict_prepared,
    prepare_pair,
    single_threaded,
)
from eva_helpers.predict.pairing import Matching, match_folders
from eva_helpers.training.trained_run import load_trained_run

if TYPE_CHECKING:
    from eva_helpers.predict.align import Alignment


CSV_NAME = "alignment.csv"
OUTPUTS = ("mask", "depth")  # OUT/<name>_<output>.png: the only files written for a pair
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


@dataclass
class FolderReport:
    """What `predict_folders` did: pairs written, pairs failed (name, one line), where the CSV is, and summaries."""
    pairs: int
    failed: list[tuple[str, str]]
    csv: Path
    matching: Matching
    alignment_line: str

    def summary(self, out: str | Path) -> str:
        """The command's line: pairs predicted, how they were paired, where, and what was left out (each a CSV row)."""
        ok = self.pairs - len(self.failed)
        return (f"predicted {ok} of {self.pairs} pairs (paired {self.matching.describe()}) -> {out} (<name>_mask.png, "
                f"<name>_depth.png, {self.csv.name}){self.matching.counts()}")


def _check_out(out: Path, *inputs: Path) -> None:
    """The output folder: not a file, and neither one of the input folders nor inside one (inputs are only read)."""
    check_output_folder(out, "predictions")
    o = out.resolve()
    for d in inputs:
        r = d.resolve()
        if o == r or r in o.parents:
            raise BadInputError(f"{out}: is inside the input folder {d}; choose an output folder outside the photos")


HEAD = ("name", "bg_file", "fg_bg_file", "paired_by", "width", "height", "bg_resized")  # a CSV row's first cells


def _predict_file(model, cfg, stats, calib, device, out: Path, align: bool, refine: bool, paired_by: str,
                  pair: tuple[str, Path, Path]) -> tuple[dict[str, Any], "Alignment | None"]:
    """One pair of files, whole: read, align, model, write `<name>_mask.png` / `<name>_depth.png`. Returns its CSV
    row and alignment; a user-fixable problem with the photos becomes the row's status (a write error still raises)."""
    name, bg_path, fg_path = pair
    row: dict[str, Any] = {"name": name, "bg_file": bg_path.name, "fg_bg_file": fg_path.name, "paired_by": paired_by,
                           "width": "", "height": "", "bg_resized": ""}
    try:
        bg, fg_bg = load_photo(bg_path), load_photo(fg_path)
        check_pair_files(bg_path, fg_path)  # as predict_one: in the same order, so the same pair gets the same line
        bg, fg_bg, resized = one_frame(bg, fg_bg, bg_path, fg_path)
        row.update(width=fg_bg.shape[1], height=fg_bg.shape[0], bg_resized=resized or "")
        prep = prepare_pair(bg, fg_bg, cfg.size, align, refine)
    except EvaError as e:
        return {**row, "status": user_message(e) or str(e)}, None
    del bg, fg_bg  # full-resolution photos: only `workers` pairs of them in memory at once
    pred = predict_prepared(model, prep, stats, device, calib)
    _write_outputs(out, name, pred)
    how = pred.get("refine") or {"refined": False, "threshold": None}
    return {**row, **prep.alignment.as_row(), "mask_refined": how["refined"],
            "refine_threshold": "" if how["threshold"] is None else how["threshold"], "status": "ok"}, prep.alignment


def _write_outputs(out: Path, name: str, pred: dict[str, Any]) -> None:
    if "mask" in pred:
        atomic_write_bytes(out / f"{name}_mask.png", encode_mask(pred["mask"]))
    if "depth" in pred:
        atomic_write_bytes(out / f"{name}_depth.png", encode_depth_png(pred["depth"]))


def _remove_outputs(out: Path, name: str) -> None:
    """Delete OUT/<name>_mask.png and _depth.png an earlier run left for a pair that has no output this time: only
    our own output names, never anything else."""
    for kind in OUTPUTS:
        (out / f"{name}_{kind}.png").unlink(missing_ok=True)


def _ahead(pool: ThreadPoolExecutor, fn: Callable, items: list, window: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) in order, with up to `window` items submitted to the pool ahead of the one returned."""
    pending: list[tuple[Any, Future]] = []
    it = iter(items)
    for item in it:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            break
    while pending:
        item, fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, fut.result()


def summarize_alignments(rows: list[tuple[str, "Alignment"]]) -> str:
    """One line over a folder's alignments: how many were registered and tone-matched, typical shifts, and the reasons
    the others were left alone."""
    if not rows:
        return "alignment: no pair was read"
    n = len(rows)
    geo = [a for _, a in rows if a.applied]
    tone = sum(a.tone_applied for _, a in rows)
    jpeg = sum(a.jpeg_applied for _, a in rows)
    line = f"alignment: {len(geo)} of {n} pairs registered, {tone} tone-matched, {jpeg} compressed like fg_bg"
    scenes = sum(a.different_scenes for _, a in rows)
    line += f", {scenes} look like different scenes" if scenes else ""
    if geo:
        shifts = sorted(math.hypot(a.dx, a.dy) for a in geo)
        line += f" (shift median {shifts[len(shifts) // 2]:.1f} px, max {shifts[-1]:.1f} px)"
    reasons: dict[str, int] = {}
    for _, a in rows:
        if not a.applied and a.reason:
            kind = re.split(r" \(|: ", a.reason)[0]  # "near identity (16 inliers)" -> "near identity"
            reasons[kind] = reasons.get(kind, 0) + 1
    if reasons:
        line += "; not registered: " + ", ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda t: -t[1]))
    return line


def predict_folders(run_dir: str | Path, bg_dir: str | Path, fg_dir: str | Path, out_dir: str | Path,
                    which: str = "best", device: str | None = None, batch_size: int = 16, align: bool = True,
                    workers: int = 2, progress: bool = True, refine: bool = True,
                    say: Callable[[str], None] | None = None, pair_by: str | Path = "name") -> FolderReport:
    """Every pair of two folders (`pair_by`: "name", "order" or a CSV file of pairs, pairing.py) ->
    OUT/<name>_mask.png (8-bit, the photo's size), OUT/<name>_depth.png (16-bit, as depth.png) and OUT/alignment.csv
    (one row per pair, status "ok" or the one-line error, and one per file left out). A pair that cannot be read is
    reported through `say` and skipped; the rest are written.

    The model is loaded once; `workers` threads each take a whole pair (read, align, model, write) with up to
    `batch_size` pairs queued ahead, so photos of any mix of sizes flow through. Each pair's bytes equal the
    single-pair command's (module docstring).
    """
    from functools import partial

    from tqdm.auto import tqdm

    if batch_size < 1:
        raise EvaError(f"--batch-size {batch_size}: must be at least 1")
    if workers < 1:
        raise EvaError(f"workers={workers}: must be at least 1")
    say = say or (lambda line: tqdm.write(line, file=sys.stderr))
    bg_dir, fg_dir, out = Path(bg_dir), Path(fg_dir), Path(out_dir)
    check_two_inputs(bg_dir, fg_dir, "folder")
    matching = match_folders(bg_dir, fg_dir, pair_by)
    _check_out(out, bg_dir, fg_dir)
    trained = load_trained_run(run_dir, which, device)
    model, cfg, stats, calib, dev = trained.model, trained.cfg, trained.stats, trained.calibration, trained.device
    model.eval()
    for line in (matching.unmatched_line(), matching.others_line()):
        if line:
            say(line)
    out.mkdir(parents=True, exist_ok=True)
    blank = {**{k: "" for k in not_aligned().as_row()}, "mask_refined": "", "refine_threshold": ""}
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    aligned: list[tuple[str, Alignment]] = []
    task = partial(_predict_file, model, cfg, stats, calib, dev, out, align, refine, matching.column())
    pool = ThreadPoolExecutor(max_workers=workers)
    bar = tqdm(total=len(matching.pairs), desc="predict", unit="pair", disable=not progress)
    try:
        with single_threaded():
            for (name, _, _), (row, alignment) in _ahead(pool, task, matching.pairs, max(batch_size, workers)):
                if alignment is None:
                    failed.append((name, row["status"]))
                    _remove_outputs(out, name)
                    say(f"skipped {name}: {row['status']}")
                    row = {**{k: row[k] for k in HEAD}, **blank,
                           "status": row["status"]}
                else:
                    aligned.append((name, alignment))
                rows.append(row)
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # an error or Ctrl-C: leave the queued pairs alone
        raise
    finally:
        bar.close()
    pool.shutdown()
    csv_path = out / CSV_NAME
    line = unaligned_line(rows, aligned)
    if line:
        say(line)
    lone = [{**dict.fromkeys(rows[0] if rows else ()), **r} for r in matching.unmatched_rows()]
    names = {n for n, _, _ in matching.pairs}
    for r in lone[:len(matching.bg_only) + len(matching.fg_only)]:  # a file without a partner now: no output of an
        if r["name"] not in names:  # earlier run beside its row (never a pair's own outputs)
            _remove_outputs(out, r["name"])
    atomic_write_text(csv_path, _csv_text(rows + sorted(lone, key=lambda r: r["name"])))
    return FolderReport(pairs=len(matching.pairs), failed=failed, csv=csv_path, matching=matching,
                        alignment_line=summarize_alignments(aligned))


def unaligned_line(rows: list[dict[str, Any]], aligned: list[tuple[str, "Alignment"]], most: int = 20) -> str | None:
    """One line naming the pairs alignment could not run on (too small, or its estimate failed), and what to do; None
    when there are none."""
    files = {r["name"]: f"{r['bg_file']} + {r['fg_bg_file']}" for r in rows}
    bad = [files[n] for n, a in aligned if could_not_align(a)]
    if not bad:
        return None
    more = f" and {len(bad) - most} more" if len(bad) > most else ""
    return (f"not aligned: {len(bad)} pair(s) too small to align or whose alignment failed ({', '.join(bad[:most])}"
            f"{more}; reasons in {CSV_NAME}): predicted as shot; pass --no-align to skip alignment on purpose")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) with a leading `'`; numbers (and
    text that is one, e.g. -3.5) as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(rows[0]) if rows else [*HEAD[:4], "status"]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
