"""Which photo of a bg folder goes with which of an fg_bg folder, for `eva predict BG_DIR FG_DIR` (`--pair-by`).

By name (kitchen.jpg + kitchen.png), by order (a phone shoot: IMG_0101 is the background, IMG_0102 the shot with the
object, so the two folders pair up first with first) or by a CSV of pairs. Every file of both folders is accounted for:
a pair, a file without a partner, or a file that is not a photo eva reads (a Live Photo's .MOV): each of the last two
gets a row in alignment.csv and a count in the summary, never a silent skip. Junk (.DS_Store, Thumbs.db) stays silent.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from eva_helpers.data.images import Listing, list_images
from eva_helpers.errors import BadInputError
from eva_helpers.paths import path_problem

PAIRINGS = ("name", "order")  # or the path of a CSV file of pairs
ORDER = "order (file names sorted, numbers by value)"


@dataclass
class Matching:
    """Pairs of a bg folder and an fg_bg folder, and the rest."""
    pairs: list[tuple[str, Path, Path]]  # (name of the outputs, bg file, fg_bg file), sorted by name
    bg_only: list[str] = field(default_factory=list)  # file names without a partner
    fg_only: list[str] = field(default_factory=list)
    skipped: int = 0  # junk, sub-folders and non-images, in both folders
    paired_by: str = "name"  # "name", "order" or the CSV file's path
    others: list[tuple[str, str]] = field(default_factory=list)  # (flag, file name): files that are not photos

    def describe(self) -> str:
        """How the pairs were made, for the summary line ("by name", "by order (...)", "by pairs.csv")."""
        return "by " + {"name": "name", "order": ORDER}.get(self.paired_by, self.paired_by)

    def column(self) -> str:
        """alignment.csv's `paired_by` cell: name, order or the CSV file's name."""
        return self.paired_by if self.paired_by in PAIRINGS else Path(self.paired_by).name

    def _lone_status(self, other_flag: str) -> str:
        return f"not in {self.column()}" if self.paired_by not in PAIRINGS else f"no partner in {other_flag}"

    def unmatched_line(self, most: int = 20) -> str | None:
        """One line naming the files without a partner (the first `most` of each folder; alignment.csv lists all),
        None when all are paired."""
        def names(v: list[str]) -> str:
            return ", ".join(v[:most]) + (f" and {len(v) - most} more" if len(v) > most else "")

        parts = [f"{len(v)} in {k} ({names(v)})" for k, v in (("--bg", self.bg_only), ("--fg-bg", self.fg_only)) if v]
        if not parts:
            return None
        why = (f"not in {self.paired_by}" if self.paired_by not in PAIRINGS
               else "no partner (same name, any extension)")
        return f"{why} for {' and '.join(parts)}: skipped"

    def others_line(self, most: int = 20) -> str | None:
        """One line naming the files that are not photos eva reads, None when there are none."""
        if not self.others:
            return None
        names = ", ".join(f"{n} in {flag}" for flag, n in self.others[:most])
        more = f" and {len(self.others) - most} more" if len(self.others) > most else ""
        return f"not a photo eva reads: {names}{more}: skipped (rows in alignment.csv)"

    def unmatched_rows(self) -> list[dict[str, str]]:
        """alignment.csv rows for the files without a partner and the files that are not photos (status says which;
        not counted as failed pairs)."""
        col = self.column()
        rows = ([{"name": Path(n).stem, "bg_file": n, "fg_bg_file": "", "paired_by": col,
                  "status": self._lone_status("--fg-bg")} for n in self.bg_only] +
                [{"name": Path(n).stem, "bg_file": "", "fg_bg_file": n, "paired_by": col,
                  "status": self._lone_status("--bg")} for n in self.fg_only])
        for flag, n in self.others:
            rows.append({"name": n, "bg_file": n if flag == "--bg" else "", "fg_bg_file": n if flag == "--fg-bg" else "",
                         "paired_by": col, "status": f"not a photo eva reads ({Path(n).suffix or 'no extension'}): "
                                                     "skipped; give JPEG, PNG, WebP or HEIC"})
        return rows

    def counts(self) -> str:
        """What was not predicted, for the summary line ("" when every file was paired)."""
        lone, other = len(self.bg_only) + len(self.fg_only), len(self.others)
        parts = [f"{lone} file(s) without a partner"] * bool(lone) + [f"{other} not a photo"] * bool(other)
        return f"; not predicted, each a row in alignment.csv: {', '.join(parts)}" if parts else ""


def natural_key(name: str) -> list:
    """IMG_2 before IMG_10: digits compare by value, the rest without case."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def match_folders(bg_dir: str | Path, fg_dir: str | Path, pair_by: str | Path = "name") -> Matching:
    """List both folders as the build does (junk such as .DS_Store, Thumbs.db, desktop.ini and hidden files skipped)
    and pair their photos `pair_by` "name" (the same stem), "order" (sorted, first with first) or a CSV file of pairs;
    no pair at all is an error naming both folders."""
    bg, fg = list_images(bg_dir), list_images(fg_dir)
    pair_by = str(pair_by)
    if pair_by == "name":
        m = _by_name(bg, fg, bg_dir, fg_dir)
    elif pair_by == "order":
        m = _by_order(bg, fg)
    else:
        m = _by_csv(bg, fg, Path(pair_by))
    m.skipped = sum(bg.skipped.values()) + sum(fg.skipped.values())
    m.others = [(flag, n) for flag, lst in (("--bg", bg), ("--fg-bg", fg)) for n in lst.others
                if not (pair_by not in PAIRINGS and (lst.folder / n).resolve() == Path(pair_by).resolve())]
    return m


def _by_name(bg: Listing, fg: Listing, bg_dir, fg_dir) -> Matching:
    fg_by = {p.stem: p for p in fg.files}
    bg_by = {p.stem: p for p in bg.files}
    m = Matching(pairs=[(s, p, fg_by[s]) for s, p in sorted(bg_by.items()) if s in fg_by],
                 bg_only=[p.name for s, p in sorted(bg_by.items()) if s not in fg_by],
                 fg_only=[p.name for s, p in sorted(fg_by.items()) if s not in bg_by])
    if not m.pairs:
        raise BadInputError(f"{bg_dir} and {fg_dir}: no file name is in both folders; a pair is two photos with the "
                            "same name (kitchen.jpg in --bg, kitchen.png or kitchen.jpg in --fg-bg), or pass "
                            "--pair-by order (a phone shoot: first with first) or --pair-by PAIRS.csv")
    return m


def _by_order(bg: Listing, fg: Listing) -> Matching:
    """First bg with first fg_bg, by natural name order; unequal counts are refused: one missing shot would shift
    every pair after it, silently."""
    if len(bg.files) != len(fg.files):
        raise BadInputError(f"--pair-by order: {bg.folder} has {len(bg.files)} photos but {fg.folder} has "
                            f"{len(fg.files)}; pairing by order needs one fg_bg per bg (a missing shot would shift every "
                            "pair after it): remove the extra photos or give a CSV of pairs (--pair-by PAIRS.csv)")
    bgs, fgs = (sorted(lst.files, key=lambda p: natural_key(p.name)) for lst in (bg, fg))
    return Matching(pairs=sorted(((f.stem, b, f) for b, f in zip(bgs, fgs)), key=lambda t: t[0]), paired_by="order")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"--pair-by {path}: cannot read it as a CSV of pairs ({getattr(e, 'strerror', None) or e})"
                            ) from None
    lines = text.splitlines()
    delim = ";" if lines and ";" in lines[0] and "," not in lines[0] else ","  # a spreadsheet's "CSV" in some locales
    rows = []
    for n, row in enumerate(csv.reader(lines, delimiter=delim), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if not rows and [c.lower() for c in cells[:2]] == ["bg", "fg_bg"]:
            continue  # the header
        rows.append((n, cells))
    return rows


def _by_csv(bg: Listing, fg: Listing, path: Path) -> Matching:
    """Pairs listed in a CSV: `bg,fg_bg[,name]` per line (a header line `bg,fg_bg,name` is optional), each a file name
    (or its stem) in its folder. One bg may serve several fg_bg (a tripod: one background, many objects); each fg_bg
    once, since its outputs are named after it (or the name column)."""
    if not path.is_file():
        raise BadInputError(f"--pair-by {path}: not name, order or a CSV file of pairs (bg,fg_bg per line)")

    def lookup(lst: Listing, value: str, n: int, flag: str) -> Path:
        for p in lst.files:
            if value in (p.name, p.stem):
                return p
        raise BadInputError(f"{path}: line {n}: {value!r} is not a photo in {lst.folder} ({flag})")

    pairs, seen, names = [], {}, {}
    for n, cells in _read_rows(path):
        if len(cells) < 2 or len(cells) > 3 or not cells[0] or not cells[1]:
            raise BadInputError(f"{path}: line {n}: expected bg,fg_bg or bg,fg_bg,name (got {','.join(cells)!r})")
        b, f = lookup(bg, cells[0], n, "--bg"), lookup(fg, cells[1], n, "--fg-bg")
        if f in seen:
            raise BadInputError(f"{path}: line {n}: {f.name} is already paired on line {seen[f]}; each fg_bg once "
                                "(its mask is named after it)")
        name = cells[2] if len(cells) == 3 and cells[2] else f.stem
        if path_problem(name, one_part=True) or name in names:
            why = f"used on line {names[name]}" if name in names else "not a plain file name"
            raise BadInputError(f"{path}: line {n}: the name {name!r} is {why}; give each pair its own plain name")
        seen[f], names[name] = n, n
        pairs.append((name, b, f))
    if not pairs:
        raise BadInputError(f"{path}: no pairs in it; write one bg,fg_bg per line (file names in the two folders)")
    used_bg = {b for _, b, _ in pairs}
    return Matching(pairs=sorted(pairs, key=lambda t: t[0]),
                    bg_only=[p.name for p in bg.files if p not in used_bg],
                    fg_only=[p.name for p in fg.files if p not in seen], paired_by=str(path))
