"""All five notebooks, in order, headless with SMOKE=True on the embedded sample (as a user would run them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = ["01_build_dataset", "02_explore_dataset", "03_train_mask", "04_train_depth", "05_train_joint"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_without_outputs(name):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in "".join(params[0]["source"])
    assert "colab-badge" in "".join(nb["cells"][0]["source"])
    install = "".join(code[1]["source"])
    assert "pip" in install and "install torch" not in install  # never reinstall torch


@pytest.mark.timeout(900)
def test_all_notebooks_run_in_order_with_smoke(tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("EVA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in NOTEBOOKS:
        out = tmp_path / f"{name}.out.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters={"SMOKE": True},
                            cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
        assert out.is_file()
    runs = tmp_path / "home" / "runs"
    assert any((d / "metrics.json").is_file() for d in runs.iterdir())
    assert any((d / "checkpoints" / "last.pt").is_file() for d in runs.iterdir())
