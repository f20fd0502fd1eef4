"""What the training cell leaves on screen, and TensorBoard logs that survive a new runtime.

The live plot redraws in its own display area, so the notices printed above it (the time estimate, "resumed from", ...)
stay to the end of the cell; the progress bar is one status line; the model summary, config and code version are
short. TensorBoard gets the training loss every few steps, and a resumed run on a fresh local log folder gets every
finished epoch back from the run's history.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import run_tiny, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (pip install tensorboard)")


class _Handle:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def update(self, obj) -> None:
        self.calls.append(("update", type(obj).__name__))


@pytest.fixture
def fake_kernel(monkeypatch):
    """A notebook kernel as loop.py sees one: IPython's display calls recorded instead of sent."""
    import IPython
    import IPython.display
    import matplotlib.pyplot as plt

    plt.close(plt.figure())  # pyplot settles its backend before it could meet the fake shell
    calls: list = []

    class Shell:
        config = {"IPKernelApp": {}}

    def display(obj, display_id=None, **kw):
        calls.append(("display", type(obj).__name__, display_id))
        return _Handle(calls) if display_id else None

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython.display, "clear_output", lambda wait=False: calls.append(("clear_output",)))
    return calls


def test_live_plot_redraws_its_own_area_and_never_clears_the_cell(tmp_path, fake_kernel, one_thread):
    run_tiny(tmp_path, epochs=3, live_plot=True)
    assert ("clear_output",) not in fake_kernel  # the notices above the plot stay
    shown = [c for c in fake_kernel if c[0] == "display"]
    assert shown == [("display", "Figure", True)], fake_kernel  # one display area ...
    assert fake_kernel.count(("update", "Figure")) == 2  # ... redrawn at the next two epoch ends


def test_progress_bar_is_one_status_line_with_step_loss_and_time_left(tmp_path, capsys, one_thread):
    run_tiny(tmp_path / "my-run", epochs=2, progress=True, delay_s=0.04)  # steps slower than tqdm's redraw interval
    err = capsys.readouterr().err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if "step " in ln]
    assert last, err
    assert "my-run epoch 2/2" in last[-1] and "loss " in last[-1] and "run left " in last[-1], last[-1]


def test_model_summary_is_one_line_unless_asked(capsys):
    from eva_helpers.colab import notebook_train as nt
    from eva_helpers.training.config import TrainConfig

    cfg = TrainConfig(task="mask", model="unet_small", size=32)
    nt.show_model(cfg)
    short = capsys.readouterr().out
    assert len(short.strip().splitlines()) == 1 and "parameters" in short, short
    nt.show_model(cfg, full=True)
    assert len(capsys.readouterr().out.splitlines()) > 20  # torchsummary's layer table


def test_config_table_shows_only_what_differs_from_the_defaults(tmp_path):
    from eva_helpers.colab import notebook_train as nt
    from eva_helpers.training.config import TrainConfig

    cfg = TrainConfig(task="mask", model="unet_small", size=32, epochs=3, batch_size=16, max_steps=6,
                      run_dir=str(tmp_path / "mask-run"), data=str(tmp_path / "data"), live_plot=True)
    table = nt.config_table(cfg).data
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]  # without the header
    names = [r.split("|")[1].strip() for r in rows]
    assert {"epochs", "batch_size", "size", "max_steps"} <= set(names), table
    assert not {"lr", "weight_decay", "seed", "schedule", "second_shot", "model", "live_plot"} & set(names), table
    assert "mask-run" in table and len(rows) <= 10


def test_version_and_commit_are_printed_once():
    from eva_helpers import __version__
    from eva_helpers.colab.session import banner

    text = banner()
    assert text.count(f"eva_helpers {__version__}") == 1, text
    assert text.count("commit") == 1, text
    for name in ("03_train_mask", "05_train_joint"):  # the install cell leaves the version to the banner below it
        install = "".join(json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"][2]["source"])
        assert "describe_code" not in install


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _epoch_tag(scalars: dict, key: str) -> list[tuple[int, float]]:
    """The points of the per-epoch curve of `key` (whatever group the tag sits in)."""
    tags = [t for t in scalars if t.split("/")[-1] == key]
    assert len(tags) == 1, sorted(scalars)
    return scalars[tags[0]]


@needs_tensorboard
def test_tensorboard_gets_the_loss_every_n_steps(tmp_path, monkeypatch, one_thread):
    from eva_helpers.training import progress as loop
    from eva_helpers.training.run_folder import tensorboard_dir

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loop, "TB_EVERY", 2)
    run_tiny(tmp_path / "run", epochs=2, tensorboard=True)  # 6 steps per epoch
    scalars = _scalars(tensorboard_dir(tmp_path / "run"))
    every = [t for t, pts in scalars.items() if [s for s, _ in pts] == [2, 4, 6, 8, 10, 12]]
    assert any("loss" in t for t in every), {t: [s for s, _ in p] for t, p in scalars.items()}


@needs_tensorboard
def test_tensorboard_curves_are_whole_after_resumes_on_fresh_runtimes(tmp_path, monkeypatch, one_thread):
    """Stopped twice, each time resumed where the local logs are gone (a new Colab runtime): every epoch is there,
    once, with the values history.jsonl holds; a resume that finds the logs (the same runtime) adds no duplicates."""
    from eva_helpers.training.run_folder import tensorboard_dir

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    run, logs = tmp_path / "run", tensorboard_dir(tmp_path / "run")
    run_tiny(run, epochs=4, tensorboard=True, max_steps=8)  # epoch 1 done, 2 steps into epoch 2
    shutil.rmtree(logs)
    run_tiny(run, epochs=4, tensorboard=True, max_steps=14)  # epoch 2 done, 2 steps into epoch 3
    run_tiny(run, epochs=4, tensorboard=True, max_steps=20)  # same runtime: the logs are still there
    shutil.rmtree(logs)
    s = run_tiny(run, epochs=4, tensorboard=True)
    assert s["finished"]
    history = [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines()]
    scalars = _scalars(logs)
    for key in ("train_loss", "val_loss"):
        points = _epoch_tag(scalars, key)
        assert len(points) == len(history) == 4, points
        assert [v for _, v in points] == pytest.approx([r[key] for r in history], rel=1e-6)


@needs_tensorboard
def test_tensorboard_cell_rebuilds_a_finished_runs_curves(tmp_path, monkeypatch, one_thread):
    from eva_helpers.colab import notebook_train as nt
    from eva_helpers.training.run_folder import tensorboard_dir

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    run_tiny(tmp_path / "run", epochs=2, tensorboard=True)
    shutil.rmtree(tensorboard_dir(tmp_path / "run"))  # a new runtime opens the finished run
    nt.tensorboard(tiny_config(tmp_path / "run", epochs=2, tensorboard=True))
    assert len(_epoch_tag(_scalars(tensorboard_dir(tmp_path / "run")), "val_loss")) == 2


# ---- the notebooks themselves (slow): the executed notebook's train cell keeps every notice to its end ----

def _execute(src: Path, out: Path, cwd: Path, **params):
    import nbformat
    import papermill as pm

    pm.execute_notebook(str(src), str(out), parameters={"SMOKE": True, **params}, cwd=str(cwd), kernel_name="python3",
                        progress_bar=False)
    return nbformat.read(str(out), as_version=4)


def _train_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and "nt.train(" in c.source)


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("EVA_NO_WIDGETS", "1")
    return tmp_path / "home"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_cell_keeps_the_estimate_and_resumed_from_after_the_plot(tmp_path, home):
    """Notebook 03 with SMOKE stops at its max_steps; run again to the epoch's end (the only change: max_steps
    lifted), the cell resumes, draws the plot at the epoch end, and still shows the estimate and "resumed from"."""
    import nbformat

    src = ROOT / "notebooks" / "03_train_mask.ipynb"
    first = _execute(src, tmp_path / "first.ipynb", tmp_path)
    assert "estimate:" in _text(_train_cell(first).outputs)
    nb = nbformat.read(str(src), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "notebook_config(" in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("cfg.max_steps = None  # the test: train to the epoch's end"))
    nbformat.write(nb, str(tmp_path / "again.ipynb"))
    second = _execute(tmp_path / "again.ipynb", tmp_path / "second.ipynb", tmp_path)
    outputs = _train_cell(second).outputs
    text = _text(outputs)
    assert "estimate:" in text and "resumed from" in text and ": finished;" in text, text
    plots = [i for i, o in enumerate(outputs) if "image/png" in o.get("data", {})]
    assert len(plots) == 1, outputs  # one display area, updated in place
    notices = [i for i, o in enumerate(outputs) if "resumed from" in o.get("text", "")]
    assert notices and notices[0] < plots[0]
    assert torch.load(home / "runs" / "mask-unet_small-32px-sample" / "checkpoints" / "last.pt",
                      weights_only=True)["epoch"] == 1
