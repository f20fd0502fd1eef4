"""eva_helpers: mask and depth prediction from a (bg, fg_bg) photo pair, from building the dataset to a report.

The subpackages follow the data (docs/architecture.md draws it):
`compositing` (bg/ + fg/ -> composites and labels) -> `data` (the dataset folder, read and verified) ->
`training` (`fit`, checkpoints, the run folder) -> `evaluation` (held-out scores, predictions on photos);
`fetching` gets a built dataset, `models` holds the networks and `colab` the notebooks' steps. At the top:
`cli`, `demo`, and what every stage shares (errors, atomic writes, paths, leases, signals, estimates, plots).

Nothing mounts, downloads or opens files at import time; heavy modules (torch, cv2) load on first use.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

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
    "metrics": "evaluation.metrics", "baseline": "evaluation.baseline", "calibrate": "evaluation.calibrate",
    "evaluate": "evaluation.heldout", "predict": "evaluation.predict", "align": "evaluation.align",
    "perturb": "evaluation.perturb",
    "session": "colab.session", "colab_install": "colab.install", "notebook": "colab.notebook",
    "notebook_train": "colab.notebook_train", "runs": "colab.runs", "widgets": "colab.widgets",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import eva_helpers.<old name>` gives the module at its new place (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == __name__ and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system sets __spec__ to ours: exec_module puts it back
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
