"""The five notebooks headless with SMOKE=True: each alone on a fresh home (as opened from its Colab badge) and all
in order 01 -> 05 (02-05 then use notebook 01's dataset); plus the rules that keep them thin and committed clean."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = ["01_build_dataset", "02_explore_dataset", "03_train_mask", "04_train_depth", "05_train_joint"]
ROOT = Path(__file__).resolve().parents[1]


def _cells(name: str) -> tuple[dict, list[dict]]:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return nb, [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_clean_and_thin(name):
    nb, code = _cells(name)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "colab-badge" in "".join(nb["cells"][0]["source"])
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] is code[0] and "SMOKE = False" in "".join(params[0]["source"])
    install = "".join(code[1]["source"])  # its script is eva_helpers/colab/install.py: test_notebooks_generated.py
    assert "REF = " in install and "install torch" not in install
    rest = ["".join(c["source"]) for c in code[2:]]
    for src in ["".join(c["source"]) for c in code]:
        tree = ast.parse(src)  # also: no IPython magics that break outside a kernel
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                                                 ast.ClassDef))], src
    lines = [len([ln for ln in src.splitlines() if ln.strip()]) for src in rest]
    assert sum(lines) / len(lines) <= 4, lines
    assert "finish(paths)" in rest[-1]  # the last step flushes Drive


def _execute(name: str, tmp_path: Path, **params) -> dict:
    """The notebook executed with SMOKE, outputs kept (nbformat's JSON)."""
    import papermill as pm

    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters={"SMOKE": True, **params},
                        cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    return json.loads(out.read_text())


def _text(cells: list[dict]) -> str:
    return "\n".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                     for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def _train_cell_keeps_its_notices(nb: dict) -> None:
    """The train cell's output still holds the time estimate and the closing line at the end of the cell."""
    train = [c for c in nb["cells"] if c["cell_type"] == "code" and "nt.train(" in "".join(c["source"])]
    text = _text(train)
    assert "estimate:" in text and "epochs;" in text, text


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("EVA_NO_WIDGETS", "1")  # browsers draw their first item: nbclient can hang on widgets
    return tmp_path / "home"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NOTEBOOKS[1:])  # 01 needs nothing before it: the in-order test runs it alone
def test_each_notebook_runs_alone_with_smoke(name, tmp_path, home):
    extra = {"TRAIN_MISSING": True} if name == "05_train_joint" else {}
    nb = _execute(name, tmp_path, **extra)
    text = _text(nb["cells"])
    assert "the shipped 64 px sample" in text  # nothing from notebook 01: the shipped sample
    runs = sorted((home / "runs").iterdir()) if (home / "runs").is_dir() else []
    if name == "05_train_joint":  # the explicit choice trained the two missing comparison runs
        assert [d.name.split("-")[0] for d in runs] == ["depth", "joint", "mask"]
        assert "training the missing mask-only run" in text
    if name != "02_explore_dataset":
        assert runs, "the notebook trained no run"
        _train_cell_keeps_its_notices(nb)
        assert all((d / "metrics.json").is_file() and (d / "checkpoints" / "last.pt").is_file() for d in runs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_all_notebooks_run_in_order_with_smoke(tmp_path, home):
    nbs = {name: _execute(name, tmp_path) for name in NOTEBOOKS}
    texts = {name: _text(nb["cells"]) for name, nb in nbs.items()}
    for name in NOTEBOOKS[2:]:
        _train_cell_keeps_its_notices(nbs[name])
    built = home / "data" / "my-dataset-smoke"
    assert json.loads((built / "manifest.json").read_text())["complete"]
    assert (built / "stats.json").is_file()  # 02's stats land beside the dataset in the home (Drive), not only the cache
    assert "the shipped 64 px sample" not in "".join(texts[n] for n in NOTEBOOKS[1:])
    runs = sorted(d.name for d in (home / "runs").iterdir())
    assert runs == [f"{t}-unet_small-32px-my-dataset-smoke" for t in ("depth", "joint", "mask")]
    assert "no finished" not in texts["05_train_joint"] and "training the missing" not in texts["05_train_joint"]
    for d in (home / "runs").iterdir():
        assert (d / "metrics.json").is_file() and (d / "checkpoints" / "last.pt").is_file()
