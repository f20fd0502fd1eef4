"""stats: streamed values equal a direct whole-array computation on a tiny dataset; written atomically; reloadable."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.stats import STATS, compute_stats, load_stats
from eva_helpers.atomic import TMP_PREFIX


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=3, n_fg=2, positions=2, size=32,
                                   shard_size=5)


def test_stats_match_a_direct_computation(syn):
    assert load_stats(syn) is None
    st = compute_stats(syn, progress=False)
    assert json.loads((syn / STATS).read_text()) == st and load_stats(syn) == st
    ds = ShardDataset(syn)
    samples = [ds[i] for i in range(len(ds))]
    for key in ("bg", "fg_bg"):
        allpix = np.concatenate([s[key].reshape(-1, 3) for s in samples]).astype(np.float64) / 255
        assert np.allclose(st[key]["mean"], allpix.mean(0), atol=1e-5)
        assert np.allclose(st[key]["std"], allpix.std(0), atol=1e-5)
    fr = np.array([s["mask"].mean() for s in samples])
    assert st["mask_fraction"]["mean"] == pytest.approx(fr.mean())
    assert st["mask_fraction"]["max"] == pytest.approx(fr.max())
    assert sum(st["mask_fraction"]["hist"]) == len(ds) == st["samples"]
    depth = np.concatenate([s["depth"].ravel() for s in samples])
    assert st["depth_hist"]["counts"] == np.histogram(depth, bins=32, range=(0, 1))[0].tolist()


def test_limit_and_no_write(syn, tmp_path, monkeypatch):
    """write=False leaves the dataset folder exactly as it was: no stats.json appears, an existing one is not
    replaced (the limited stats differ from the full ones, so a rewrite would change its bytes), no temp file."""
    import shutil

    from _build_helpers import folder_state

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))  # the verification record goes there, not into ds
    ds = tmp_path / "ds"
    shutil.copytree(syn, ds)
    (ds / STATS).unlink(missing_ok=True)  # the module's other test may have written one into syn
    before = folder_state(ds)  # every entry: (mtime_ns, bytes)
    dir_mtime = ds.stat().st_mtime_ns
    st = compute_stats(ds, limit=4, progress=False, write=False)
    assert st["samples"] == 4 and st["of_samples"] == 12 and sum(st["depth_hist"]["counts"]) == 4 * 32 * 32
    assert not (ds / STATS).exists()
    assert folder_state(ds) == before and ds.stat().st_mtime_ns == dir_mtime  # nothing created, renamed or removed

    full = compute_stats(ds, progress=False)  # write=True: the file exists now
    assert full != st and (ds / STATS).is_file()
    before = folder_state(ds)
    assert compute_stats(ds, limit=4, progress=False, write=False) == st
    assert folder_state(ds) == before and load_stats(ds) == full
    assert not any(p.name.startswith(TMP_PREFIX) for p in ds.rglob("*"))
