"""The package's shape, kept: stages as subpackages, short modules, imports that only run one way."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "eva_helpers"
MAX_TOP_MODULES = 12
MAX_LINES = 350
# the training loop reads better whole, top to bottom (issue 31): its one function and the pure pieces it calls
LONGER = {"eva_helpers.training.trainer": 650}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere in its file (inside functions too: a cycle there is still a cycle)."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_at_most_twelve_modules_at_the_top():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_no_module_over_350_lines_but_the_trainer():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > LONGER.get(n, MAX_LINES)} == {}


def test_no_import_cycle():
    mods = _modules()
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


# Which stage may import which (besides BASE, the top-level modules every stage shares, which import only each other).
# Read down the data: data and models know no stage; compositing writes datasets in data's formats; fetching copies
# them; training reads them into models; prediction runs a trained model on photos; evaluation scores trained runs
# (predicting as `eva predict` does). The front ends (cli, colab, demo) may import
# any stage.
BASE = {"eva_helpers", "errors", "atomic", "paths", "lease", "lease_record", "signals", "precision", "plots",
        "estimate"}
MAY_IMPORT = {
    "data": set(),
    "models": set(),
    "compositing": {"data"},
    "fetching": {"data"},
    "training": {"data", "models"},
    "predict": {"data", "models", "training"},
    "evaluation": {"data", "models", "training", "predict"},
}
FRONT_ENDS = {"cli", "colab", "demo"}
# colab/install.py is standard library only and runs before the package exists (the notebooks' install cell copies it
# verbatim), so where the code came from has one owner there, and the run folder's code.json reads it
ALSO = {"eva_helpers.training.run_folder": {"eva_helpers.colab.install"}}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_stages_import_only_down_the_table():
    mods = _modules()
    assert {_group(n) for n in mods} == BASE | set(MAY_IMPORT) | FRONT_ENDS, "a new stage: give it a row"
    wrong = []
    for name, path in mods.items():
        group = _group(name)
        if group in FRONT_ENDS:
            continue
        allowed = BASE if group in BASE else BASE | MAY_IMPORT[group] | {group}
        wrong += [f"{name} -> {m}" for m in sorted(_imports(name, path, set(mods)))
                  if _group(m) not in allowed and m not in ALSO.get(name, ())]
    assert wrong == []
