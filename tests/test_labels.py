"""No label loses its object: over a whole build of the embedded sample, every pasted object differs from the ring of
background around it by at least teachers.MIN_CONTRAST, in every labelling mode (geometric teacher, 32 px)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from eva_helpers.data import formats
from _build_helpers import object_contrast
from eva_helpers.compositing.labels import MIN_CONTRAST

pytestmark = pytest.mark.timeout(300)


def _contrasts(dataset):
    """Per sample: (object contrast vs its ring, object pixels' spread) over every shard of a built dataset."""
    m = formats.read_manifest(dataset)
    out = []
    for e in m["shards"]:
        zf = zipfile.ZipFile(dataset / e["file"])
        for r in formats.read_jsonl(zf.read(formats.INDEX)):
            obj = formats.decode_mask(zf.read(formats.member("mask", r["id"]))) >= formats.MASK_THRESHOLD
            d = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
            out.append((object_contrast(d, obj), float(np.ptp(d[obj])) if obj.any() else 0.0))
    return np.array(out), m["counts"]["samples"]


def test_no_object_vanishes_in_the_layered_sample_build(sample_dataset):
    c, n = _contrasts(sample_dataset)
    assert len(c) == n == 384
    assert np.all(np.abs(c[:, 0]) >= MIN_CONTRAST - 1e-4), np.sort(np.abs(c[:, 0]))[:5]
    assert np.mean(c[:, 1] > 0) > 0.9  # relief: almost every object is more than one flat value


@pytest.mark.parametrize("mode", ["hybrid", "per-composite"])
def test_no_object_vanishes_in_composite_modes(tmp_path, mode):
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.paths import sample_assets

    out = tmp_path / mode
    build_dataset(sample_assets() / "bg", sample_assets() / "fg", out, size=32, positions=1, seed=0, shard_size=128,
                  workers=1, progress=False, mode=mode)
    c, n = _contrasts(out)
    assert len(c) == n == 384 and np.all(np.abs(c[:, 0]) >= MIN_CONTRAST - 1e-4)
