"""The committed notebooks are exactly what tools/make_notebooks.py writes (cell sources, the embedded install script,
parameter defaults from TrainConfig, metadata and cell ids): a change to any of them must be followed by a rerun."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RERUN = "run `python tools/make_notebooks.py` and commit notebooks/"


def _make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the notebooks in memory; writes nothing
    return module


def _first_difference(committed: dict, generated: dict) -> str:
    if committed.get("metadata") != generated.get("metadata"):
        return "notebook metadata"
    a, b = committed.get("cells", []), generated.get("cells", [])
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"cell {i} ({y.get('id')})"
    return f"cell count {len(a)} != {len(b)}" if len(a) != len(b) else "top-level fields or formatting"


def test_committed_notebooks_match_the_generator(tmp_path):
    written = _make_notebooks().write_notebooks(tmp_path)
    committed = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in written) == committed, f"notebooks/ holds other notebooks than the generator: {RERUN}"
    stale = {}
    for path in written:
        old, new = (ROOT / "notebooks" / path.name).read_bytes(), path.read_bytes()
        if old != new:
            stale[path.name] = _first_difference(json.loads(old), json.loads(new))
    assert not stale, f"committed notebooks differ from tools/make_notebooks.py ({stale}): {RERUN}"
