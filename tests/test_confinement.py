"""Every place a name becomes a path is confined: dataset names (fetch, locate, notebooks), file names inside a data
manifest entry, run names. A bad name is a one-line EvaError naming where it came from, before anything is written."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.fetching import catalogue as C
from eva_helpers.fetching import fetch as F
from eva_helpers.errors import EvaError
from eva_helpers import paths as P
from eva_helpers.paths import Paths

BAD_NAMES = ["../../x", "..", ".", "", "a/b", "a\\b", "C:x", "a\0b"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_bg=2, n_fg=2, positions=1, size=32,
                                   shard_size=2)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---- the shared helper ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sample", "my-dataset", "run 1", "a.b", "mask-unet_small-224px-my-dataset"])
def test_safe_name_keeps_plain_names(name):
    assert P.safe_name(name, what="dataset name", source="x.json") == name


@pytest.mark.parametrize("name", BAD_NAMES + ["/abs", "\\abs", "x" * 256, "a\nb"])
def test_safe_name_refuses_anything_but_one_plain_component(name):
    with pytest.raises(EvaError) as e:
        P.safe_name(name, what="run name", source="RUN_NAME")
    msg = _one_line(e)
    assert msg.startswith("RUN_NAME: run name ") and repr(name)[:40] in msg


@pytest.mark.parametrize("rel", ["shards/../../x.zip", "/abs.zip", "shards\\x.zip", "shards/", "shards//x.zip",
                                 "./x.zip", "C:/x.zip", ""])
def test_safe_relpath_refuses_escaping_or_odd_paths(rel):
    with pytest.raises(EvaError, match="m.json: shard file"):
        P.safe_relpath(rel, what="shard file", source="m.json")
    assert P.safe_relpath("shards/shard-00000.zip", what="shard file", source="m.json") == "shards/shard-00000.zip"


# ---- eva fetch NAME -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES + ["ABS"])
def test_fetch_refuses_a_dataset_name_that_is_not_a_plain_folder_name(syn, tmp_path, name):
    if name == "ABS":
        name = str(tmp_path / "abs")  # an absolute name (kept inside tmp_path in case it is not refused)
    dm = tmp_path / "data_manifest.json"
    C.save_entry(name, C.manifest_entry_for(syn, "repo_path", base=str(tmp_path)), dm)
    cache = tmp_path / "a" / "b" / "cache"
    before = _tree(tmp_path)
    with pytest.raises(EvaError) as e:
        F.fetch_dataset(name, data_manifest=dm, cache=cache, progress=False)
    msg = _one_line(e)
    assert str(dm) in msg and repr(name) in msg
    assert _tree(tmp_path) == before  # nothing written, not even the cache folder


def test_fetch_refuses_a_bad_name_in_an_entry_dict(syn, tmp_path):
    entry = C.manifest_entry_for(syn, "repo_path", base=str(syn.parent))
    entry["name"], entry["base"] = "../escaped", str(syn.parent)
    with pytest.raises(EvaError, match=r"'\.\./escaped'") as e:
        F.fetch_dataset(entry, cache=tmp_path / "cache", progress=False)
    _one_line(e)
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("where,file", [("dataset_manifest", "sub/manifest.json"),
                                        ("dataset_manifest", "..\\manifest.json"),
                                        ("backgrounds", "bg/backgrounds.zip"),
                                        ("backgrounds", "backgrounds.zip/"),
                                        ("shard", "shards\\..\\..\\x.zip"),
                                        ("shard", "shards/"),
                                        ("shard", "shards/../../x.zip"),
                                        ("shard", "/abs/x.zip")])
def test_fetch_confines_the_file_names_of_an_entry(syn, tmp_path, where, file):
    entry = copy.deepcopy(C.manifest_entry_for(syn, "repo_path", base=str(tmp_path / "dm")))
    entry["name"] = "syn"
    spec = entry["shards"][-1] if where == "shard" else entry[where]
    spec["file"] = file
    dm = tmp_path / "dm" / "data_manifest.json"
    C.save_entry("syn", entry, dm)
    (tmp_path / "c").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(EvaError) as e:
        F.fetch_dataset("syn", data_manifest=dm, cache=tmp_path / "c", progress=False)
    msg = _one_line(e)
    assert repr(file) in msg and str(dm) in msg
    assert _tree(tmp_path) == before


def test_fetch_by_a_plain_name_still_works(syn, tmp_path):
    dm = tmp_path / "data_manifest.json"
    C.save_entry("my-data.v2", C.manifest_entry_for(syn, "repo_path", base=str(tmp_path)), dm)
    dest = F.fetch_dataset("my-data.v2", data_manifest=dm, cache=tmp_path / "c", progress=False)
    assert dest == tmp_path / "c" / "my-data.v2" and (dest / "manifest.json").is_file()


# ---- dataset names chosen in a notebook, run names ------------------------------------------------------------------
@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    home = tmp_path / "home"
    p = Paths(root=home, data=home / "data", runs=home / "runs", cache=tmp_path / "cache", on_drive=False)
    for d in (p.data, p.runs, p.cache):
        d.mkdir(parents=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "../x" relative to the working folder is not "../x" relative to paths.data
    return p


def test_locate_never_resolves_a_name_outside_the_data_folder(syn, paths):
    from eva_helpers.fetching.locate import resolve_dataset

    escaped = paths.data.parent / "escaped"  # <data>/../escaped
    write_synthetic_dataset(escaped, n_bg=2, n_fg=2, positions=1, size=32, shard_size=2)
    with pytest.raises(EvaError) as e:
        resolve_dataset("../escaped", paths)
    _one_line(e)
    write_synthetic_dataset(paths.data / "mine", n_bg=2, n_fg=2, positions=1, size=32, shard_size=2)
    assert resolve_dataset("mine", paths) == paths.data / "mine"  # a plain name under data/ still resolves
    assert resolve_dataset(str(escaped), paths) == escaped  # and so does an explicit folder path


def test_notebook_dataset_for_never_uses_a_name_outside_the_data_folder(syn, paths):
    from eva_helpers.colab.notebook import dataset_for

    from eva_helpers.data import formats

    escaped = write_synthetic_dataset(paths.data.parent / "escaped", n_bg=2, n_fg=2, positions=1, size=32,
                                      shard_size=2)
    formats.write_manifest(escaped, {**formats.read_manifest(escaped), "complete": True})  # a finished build
    with pytest.raises(EvaError) as e:
        dataset_for("../escaped", paths)
    _one_line(e)
    assert not (escaped / "stats.json").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/abs"])
def test_notebook_build_refuses_a_dataset_name_that_is_not_a_folder_name(paths, name):
    from eva_helpers.colab.notebook import build_plan

    with pytest.raises(EvaError) as e:
        build_plan(paths, dataset=name, teacher="geometric")
    assert repr(name) in _one_line(e)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/abs", "a\\b"])
def test_run_names_are_confined_to_the_runs_folder(paths, name):
    from eva_helpers.colab.runs import notebook_config
    from eva_helpers.training.run_folder import run_folder

    with pytest.raises(EvaError) as e:
        run_folder(paths.runs, "mask", "unet_small", 32, "data", name=name)
    assert repr(name) in _one_line(e)
    with pytest.raises(EvaError, match="run name"):
        notebook_config("mask", "data", paths, run_name=name)
    assert run_folder(paths.runs, "mask", "unet_small", 32, "data", name="mine") == paths.runs / "mine"
    assert run_folder(paths.runs, "mask", "unet_small", 32, "/x/my-data") == paths.runs / "mask-unet_small-32px-my-data"


def test_the_repo_data_manifest_names_are_all_plain():
    doc = json.loads(C.DEFAULT_DATA_MANIFEST.read_text())
    for name in doc["datasets"]:
        assert P.safe_name(name, what="dataset name", source="data_manifest.json") == name
