"""eva_helpers: mask and depth prediction from a (bg, fg_bg) photo pair, from building the dataset to a report.

The subpackages follow the data (docs/architecture.md draws it):
`compositing` (bg/ + fg/ -> composites and labels) -> `data` (the dataset folder, read and verified) ->
`training` (`fit`, checkpoints, the run folder) -> `evaluation` (held-out scores, predictions on photos);
`fetching` gets a built dataset, `models` holds the networks and `colab` the notebooks' steps. At the top:
`cli`, `demo`, and what every stage shares (errors, atomic writes, paths, leases, signals, estimates, plots).

Nothing mounts, downloads or opens files at import time; heavy modules (torch, cv2) load on first use.
"""
__version__ = "0.1.0"
