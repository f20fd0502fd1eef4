"""The embedded sample dataset listed in data_manifest.json: fetched by name, verified, cached, readable."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_manifest_is_the_top_level_one():
    packaged = ROOT / "eva_helpers" / "data_manifest.json"
    assert json.loads(packaged.read_text()) == json.loads((ROOT / "data_manifest.json").read_text())


def test_fetch_sample_by_name_then_skip(tmp_path):
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.fetching.fetch import fetch_dataset

    path = fetch_dataset("sample", cache=tmp_path, progress=False)
    ds = ShardDataset(path)
    assert len(ds) == 384
    s = ds[0]
    assert s["fg_bg"].shape == (64, 64, 3) and set(s["mask"].ravel().tolist()) <= {0, 1}
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*.zip")}
    again = fetch_dataset("sample", cache=tmp_path, progress=False)
    assert again == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*.zip")} == before  # verified files are not fetched again
