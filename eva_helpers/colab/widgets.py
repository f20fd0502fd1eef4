"""Browsers for samples, splits and predictions built from core ipywidgets only (Colab ships ipywidgets 7.7).

With $EVA_NO_WIDGETS set (the headless notebook tests) a browser returns the figure of its first item instead:
nbclient can wait forever on a cell that opens widgets (jupyter/nbclient#312; it happened here under load).
"""
from __future__ import annotations

import os
from typing import Sequence

from eva_helpers.data.loaders import collate
from eva_helpers.plots import show_predictions, show_samples
from eva_helpers.training.trainer import model_batch

NO_WIDGETS_ENV = "EVA_NO_WIDGETS"


def _browser(n_items_for, render, options: Sequence[str]):
    """A dropdown of item lists + a slider over the chosen list + an Output that `render(option, k)` draws into."""
    if os.environ.get(NO_WIDGETS_ENV):
        return render(options[0], 0) if n_items_for(options[0]) else None
    import ipywidgets as W
    from IPython.display import display

    choice = W.Dropdown(options=list(options), description="split")
    slider = W.IntSlider(min=0, max=max(0, n_items_for(options[0]) - 1), description="sample", continuous_update=False)
    out = W.Output()

    def redraw(*_):
        slider.max = max(0, n_items_for(choice.value) - 1)
        with out:
            out.clear_output(wait=True)
            if n_items_for(choice.value) == 0:
                print(f"the {choice.value} split is empty")
                return
            fig = render(choice.value, slider.value)
            display(fig)
            import matplotlib.pyplot as plt

            plt.close(fig)

    choice.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([choice, slider]), out])


def sample_browser(dataset, splits: dict | None = None):
    """Browse a ShardDataset (untransformed) by split: bg | fg_bg | mask | depth with provenance."""
    lists = {"all": list(range(len(dataset)))}
    if splits:
        lists.update({k: list(v) for k, v in splits.items() if k in ("train", "val", "test")})
    return _browser(lambda s: len(lists[s]), lambda s, k: show_samples([dataset[lists[s][k]]]), list(lists))


def prediction_browser(model, datasets: dict, stats: dict | None = None, device: str = "cpu"):
    """Browse predictions against targets; `datasets` maps a split name to a transformed ShardDataset."""
    import torch

    def render(split: str, k: int):
        s = datasets[split][k]
        batch = collate([s])
        with torch.no_grad():
            model.eval()
            x, targets = model_batch(batch, torch.device(device), stats)
            outputs = {n: v.float().cpu() for n, v in model(x).items()}
        label = f"{s['meta'].get('bg_id', '')}+{s['meta'].get('fg_id', '')}"
        return show_predictions(batch["fg_bg"], {n: v.cpu() for n, v in targets.items()}, outputs, [label])

    return _browser(lambda s: len(datasets[s]), render, list(datasets))
