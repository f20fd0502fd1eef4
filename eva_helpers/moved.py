"""Import paths from before the package was split into stages, kept working for users' saved notebooks and scripts.

`import eva_helpers.train` gives `eva_helpers.training.fit` itself; where names left an old module when it was split
(`eva_helpers.train.load_run` is `training.run_folder.load_run` now), a stand-in module finds them where they went.
Installed once, when `eva_helpers` is imported.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import types

# Module paths before the package was split into stages: a user's saved notebook still imports them.
MOVED = {
    "images": "compositing.images", "compose": "compositing.compose", "teachers": "compositing.teachers",
    "labels": "compositing.labels", "build": "compositing.build",
    "formats": "data.formats", "compression": "data.compression", "index": "data.columns",
    "dataset": "data.dataset", "stats": "data.stats", "sampler": "data.sampler", "loaders": "data.loaders",
    "augment": "data.augment", "extract": "data.extract",
    "fetch": "fetching.fetch", "locate": "fetching.locate",
    "config": "training.config", "train": "training.fit", "train_loop": "training.loop",
    "checkpoint": "training.checkpoint", "distributed": "training.distributed", "losses": "training.losses",
    "warm_start": "training.warm_start", "batch_augment": "training.batch_augment",
    "second_shot": "training.second_shot",
    "metrics": "training.metrics", "baseline": "evaluation.baseline", "calibrate": "evaluation.calibrate",
    "evaluate": "evaluation.heldout", "predict": "evaluation.predict", "align": "evaluation.align",
    "perturb": "evaluation.perturb",
    "session": "colab.session", "colab_install": "colab.install", "notebook": "colab.notebook",
    "notebook_train": "colab.notebook_train", "runs": "colab.runs", "widgets": "colab.widgets",
}


# Names that left their old module when it was split ("module" or "module:new name"); everything else kept its module.
MOVED_NAMES = {
    "build": {"BandPNG": "data.formats", "PNG_LEVEL": "data.formats", "build_shard": "compositing.shards"},
    "index": {n: "data.verify" for n in ("VerifyRecord", "build_columns", "dataset_identity", "open_dataset",
                                          "verify_file", "write_index")},
    "fetch": {**{n: "fetching.catalogue" for n in ("DATA_MANIFEST_SCHEMA", "DEFAULT_DATA_MANIFEST", "DRIVE_HOME",
                                                   "PACKAGED_DATA_MANIFEST", "REPO_ROOT", "SOURCE_KINDS",
                                                   "manifest_entry_for", "save_entry")},
              **{n: "fetching.transport" for n in ("AccessDeniedError", "HtmlInsteadOfFileError", "MIN_SPEED",
                                                   "QuotaError", "READ_TIMEOUT_S", "SPEED_WINDOW_S")}},
    "config": {"TASKS": "training.config:TASK_HEADS"},
    "checkpoint": {"CKPT_DIR": "training.checkpoint:CHECKPOINTS"},
    "train": {"EXTENSIONS": "training.run_folder", "FORMAT": "training.state", "load_run": "training.run_folder",
              "read_extensions": "training.run_folder", "read_history": "training.run_folder"},
    "predict": {"describe_alignment": "evaluation.align",
                **{n: "evaluation.predict_folders" for n in ("CSV_NAME", "FolderReport", "Matching", "match_folders",
                                                             "predict_folders", "summarize_alignments")}},
    "align": {**{n: "evaluation.registration" for n in ("ANALYSIS_SIDE", "MIN_INLIERS", "MIN_RESPONSE",
                                                        "NEAR_IDENTITY_PX", "TRIM")},
              "TONE_KEEP": "evaluation.registration:FIT_KEEP"},
    "runs": {n: "training.run_folder" for n in ("read_run_config", "recorded_identity", "resolve_data")},
    "train_loop": {"Run": "training.state", "evaluate": "training.loop:validate",
                   "make_loader": "training.loop:seeded_loader", "prepare": "data.loaders:prepare_batch"},
}


def _moved_name(old: str, name: str):
    where, _, new_name = MOVED_NAMES[old][name].partition(":")
    return getattr(importlib.import_module(f"eva_helpers.{where}"), new_name or name)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import eva_helpers.<old name>` gives the module at its new place: the module itself, or, where names moved
    out of it, a stand-in that finds them where they went."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == "eva_helpers" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        module = importlib.import_module(f"eva_helpers.{MOVED[old]}")
        if old not in MOVED_NAMES:
            spec.loader_state = module.__spec__  # the import system sets __spec__ to ours: exec_module puts it back
            return module
        stand_in = types.ModuleType(spec.name, module.__doc__)

        def find(name: str):
            return _moved_name(old, name) if name in MOVED_NAMES[old] else getattr(module, name)

        stand_in.__getattr__ = find
        return stand_in

    def exec_module(self, module):
        if module.__spec__.loader_state is not None:
            module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
