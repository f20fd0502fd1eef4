"""`eva build | fetch | stats | train | eval | predict | demo`: the same functions the notebooks call.

User errors print one line naming the file or flag at fault and exit 2, with no traceback: EvaError, OSError (a full
disk, a permission refused, a path through a file), the same re-raised from a DataLoader worker, and a command line
argparse cannot read. Ctrl-C and SIGTERM stop every command the same way, in one line, exiting 130 and 143 (training
saves a checkpoint at that step first). Heavy imports happen per command.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from eva_helpers.errors import UsageError, user_message


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers, e.g. 0.3,0.7)") from None
    return lo, hi


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (UsageError), not a usage block and SystemExit."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def cmd_build(a: argparse.Namespace) -> None:
    from eva_helpers.compositing.build import build_dataset

    manifest = build_dataset(
        a.bg, a.fg, a.out, size=a.size, positions=a.positions, seed=a.seed, teacher=a.teacher, mode=a.mode,
        scale_range=a.scale_range, flips=not a.no_flips, shard_size=a.shard_size, jpeg_quality=a.jpeg_quality,
        workers=a.workers, on_bad=a.on_bad, limit=a.limit,
        teacher_kwargs={k: v for k, v in (("model_dir", a.teacher_model_dir), ("input_size", a.teacher_input_size))
                        if v is not None} or None,
    )
    c = manifest["counts"]
    print(f"built {c['samples']} samples in {c['shards']} shards -> {a.out}")
    for kind, folder in (("bg", a.bg), ("fg", a.fg)):
        bad = (c.get(f"skipped_{kind}") or {}).get("bad", 0)
        if bad:  # --on-bad skip: say how many inputs were left out, and where the list is
            print(f"skipped {bad} unreadable file(s) in {folder}: listed under 'skipped' in "
                  f"{Path(a.out) / 'manifest.json'}", file=sys.stderr)


def cmd_fetch(a: argparse.Namespace) -> None:
    from eva_helpers.fetching.fetch import fetch_dataset

    path = fetch_dataset(a.name, data_manifest=a.manifest, cache=a.cache)
    print(path)


def cmd_stats(a: argparse.Namespace) -> None:
    from eva_helpers.data.stats import compute_stats, describe_stats

    print(describe_stats(compute_stats(a.data, limit=a.limit)))
    print(f"written: {Path(a.data) / 'stats.json'}")


def _stage(text: str) -> list[int]:
    """"32:5" -> [32, 5] (a size in px and its epochs) for --size-stages."""
    size, sep, epochs = text.partition(":")
    if not (sep and size.isdigit() and epochs.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not SIZE:EPOCHS, e.g. 32:5")
    return [int(size), int(epochs)]


def train_config_from_args(a: argparse.Namespace):
    from eva_helpers.training.config import TrainConfig

    cfg = TrainConfig(task=a.task, data=a.data, run_dir=a.run_dir, model=a.model or TrainConfig.model,
                      epochs=a.epochs, batch_size=a.batch_size, size=a.size,
                      seed=a.seed, lr=a.lr, schedule=a.schedule, loss_weighting=a.loss_weighting,
                      checkpoint_interval_s=a.checkpoint_interval, max_steps=a.max_steps, workers=a.workers,
                      compile=a.compile, deterministic=a.deterministic, pretrained=a.pretrained,
                      tensorboard=a.tensorboard, device=a.device, second_shot=a.second_shot,
                      init_from=a.init_from, init_which=a.init_which, size_stages=a.size_stages)
    for key in ("stem", "inputs", "mask_head"):
        if getattr(a, key, None):
            cfg.model_kwargs[key] = getattr(a, key)
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from eva_helpers.training.fit import fit

    summary = fit(train_config_from_args(a))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; one summary is enough
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))


def cmd_eval(a: argparse.Namespace) -> None:
    from eva_helpers.evaluation.heldout import evaluate_run

    metrics = evaluate_run(a.run_dir, a.data, split=a.split, which=a.which, perturb=a.perturb, align=a.align)
    print(json.dumps(metrics, indent=1))


class _PerturbAction(argparse.Action):
    """`--perturb NAME`: a name from perturb.PERTURBATIONS; `--perturb list` prints them with what each does and exits
    at once (like --help, before the required flags are asked for); any other name is a one-line usage error."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from eva_helpers.evaluation.perturb import PERTURBATIONS, describe, names_line

        if value == "list":
            print(describe())
            parser.exit(0)
        if value not in PERTURBATIONS:
            parser.error(f"argument {option_string}: unknown perturbation {value!r}; choose from {names_line()} "
                         "(or 'list')")
        setattr(namespace, self.dest, value)


def cmd_predict(a: argparse.Namespace) -> None:
    """Two photos -> one pair; two folders -> every pair matched by file name (exit 2 at the end if any failed)."""
    from eva_helpers.errors import BadInputError, EvaError
    from eva_helpers.evaluation.align import describe_alignment
    from eva_helpers.evaluation.predict_folders import predict_folders
    from eva_helpers.evaluation.predict import predict_one

    if a.batch_size < 1:
        raise EvaError(f"--batch-size {a.batch_size}: must be at least 1")
    folders = {flag: Path(p).is_dir() for flag, p in (("--bg", a.bg), ("--fg-bg", a.fg_bg))}
    if any(folders.values()):
        if not all(folders.values()):
            d, f = ("--bg", "--fg-bg") if folders["--bg"] else ("--fg-bg", "--bg")
            path = {"--bg": a.bg, "--fg-bg": a.fg_bg}
            raise BadInputError(f"{path[d]}: {d} is a folder but {f} {path[f]} is not: give two folders (a shoot, "
                                "pairs matched by file name) or two photos (one pair)")
        report = predict_folders(a.run_dir, a.bg, a.fg_bg, a.out, which=a.which, batch_size=a.batch_size,
                                 align=not a.no_align)
        ok = report.pairs - len(report.failed)
        print(f"predicted {ok} of {report.pairs} pairs -> {a.out} (<name>_mask.png, <name>_depth.png, "
              f"{report.csv.name})")
        print(report.alignment_line)
        if report.failed:
            raise EvaError(f"{len(report.failed)} of {report.pairs} pairs failed: see {report.csv}")
        return
    written, alignment = predict_one(a.run_dir, a.bg, a.fg_bg, a.out, which=a.which, align=not a.no_align)
    print(describe_alignment(alignment))
    for p in written:
        print(p)


def cmd_demo(a: argparse.Namespace) -> None:
    from eva_helpers.demo import run_demo

    report = run_demo(a.out, minutes=a.minutes, seed=a.seed)
    print(f"report: {report}")


def _perturb_names() -> str:
    from eva_helpers.evaluation.perturb import names_line

    return names_line()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every optional flag's help ends with its default (required ones have none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.required else super()._get_help_string(action)


class _HelpNames(_Help):
    """Never wraps a line inside a hyphenated name (`wb-strong`, `exposure-10`): the perturbation names stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eva", description="eva-maskdepth: masks and depth from (bg, fg_bg) pairs.")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": _Help}

    b = sub.add_parser("build", help="composite bg/ + fg/ into verified zip shards with depth labels", **fmt)
    b.add_argument("--bg", required=True, help="folder of background photos")
    b.add_argument("--fg", required=True, help="folder of cut-outs with an alpha channel")
    b.add_argument("--out", required=True, help="dataset folder to create (or resume)")
    b.add_argument("--size", type=int, default=224, help="side of the square composites in pixels")
    b.add_argument("--positions", type=int, default=20, help="random placements per (bg, fg, flip)")
    b.add_argument("--seed", type=int, default=0, help="every random choice of sample i derives from (seed, i)")
    b.add_argument("--teacher", default="geometric", help="geometric | depth-anything-v2-small | midas-small")
    b.add_argument("--teacher-model-dir", default=None, help="load the Depth Anything teacher from a local folder")
    b.add_argument("--mode", default="layered", choices=["layered", "hybrid", "per-composite"],
                   help="depth labels: teacher once per background with the object as a layer; hybrid (background "
                        "from the clean photo, object from the composite, aligned outside the mask); or every composite "
                        "(aligned to the background's map)")
    b.add_argument("--teacher-input-size", type=int, default=None,
                   help="side the deep teacher runs at (default: its own, 518 for Depth Anything V2, 256 for MiDaS)")
    b.add_argument("--scale-range", type=_pair, default=(0.3, 0.7), help="object height as a fraction of the bg: LO,HI")
    b.add_argument("--no-flips", action="store_true", help="do not add mirrored cut-outs")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per zip shard")
    b.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of fg_bg (4:4:4 chroma)")
    b.add_argument("--workers", type=int, default=None, help="build processes (None: one per CPU)")
    b.add_argument("--on-bad", choices=["error", "skip"], default="error", help="unreadable inputs: stop, or skip and report")
    b.add_argument("--limit", type=int, default=None, help="build only the first N samples")
    b.set_defaults(func=cmd_build)

    f = sub.add_parser("fetch", help="download/copy a dataset listed in data_manifest.json into the local cache, verified",
                       **fmt)
    f.add_argument("name", help="dataset name in data_manifest.json")
    f.add_argument("--manifest", default=None, help="data_manifest.json to read (default: the repository's)")
    f.add_argument("--cache", default=None, help="local cache folder (default: /content/eva_cache on Colab)")
    f.set_defaults(func=cmd_fetch)

    s = sub.add_parser("stats", help="per-channel mean/std, foreground fraction, depth histogram -> stats.json", **fmt)
    s.add_argument("--data", required=True, help="dataset folder (holding manifest.json)")
    s.add_argument("--limit", type=int, default=None, help="only the first N samples (a 400k build takes minutes)")
    s.set_defaults(func=cmd_stats)

    t = sub.add_parser("train", help="train (resumes from <run-dir>/checkpoints when present; works under torchrun)",
                       **fmt)
    t.add_argument("--task", choices=["mask", "depth", "joint"], required=True, help="what the model predicts")
    t.add_argument("--data", required=True, help="dataset folder (holding manifest.json)")
    t.add_argument("--run-dir", required=True, help="run folder: config, history, checkpoints, metrics (resumed if present)")
    t.add_argument("--model", default=None, help="registry name, e.g. unet_small, resnet18_unet (None: TrainConfig's default)")
    t.add_argument("--stem", choices=["concat", "two"], default=None,
                   help="UNet input: one stem over cat(bg, fg_bg) (default) or a stem per image (--inputs concat only)")
    t.add_argument("--inputs", choices=["concat", "diff", "tolerant", "siamese"], default=None,
                   help="what the model sees: bg+fg_bg, plus |fg_bg - bg| (diff), plus a difference that tolerates 2 px "
                        "of shake (tolerant), or a shared two-stream encoder (None: the default)")
    t.add_argument("--mask-head", choices=["plain", "residual"], default=None,
                   help="plain head (None: the default, plain) or residual: the thresholded |fg_bg - bg| as a learned "
                        "prior the network corrects")
    t.add_argument("--second-shot", choices=["off", "tone", "full"], default="full",
                   help="train on pairs that look like two real photos: bg perturbed in tone, blur, noise and JPEG "
                        "(tone), plus hand shake and cast shadows (full); off: exact composites")
    t.add_argument("--init-from", metavar="RUN_DIR", default=None,
                   help="start from another run's weights (not its optimizer or schedule): a run of the same model "
                        "and inputs, at any size or on any dataset; a joint run may start from a mask-only or "
                        "depth-only one (the other head starts fresh)")
    t.add_argument("--init-which", choices=["best", "last"], default="best",
                   help="which checkpoint of --init-from to start from")
    t.add_argument("--size-stages", nargs="+", type=_stage, default=None, metavar="SIZE:EPOCHS",
                   help="progressive resizing: train these stages first, e.g. 32:5 (5 epochs at 32 px), then the "
                        "remaining epochs at --size (validation and evaluation are always at --size)")
    t.add_argument("--epochs", type=int, default=10,
                   help="epochs in all; more than a finished run had extends it (the schedule is re-timed)")
    t.add_argument("--batch-size", type=int, default=32, help="samples per optimizer step (per process under torchrun)")
    t.add_argument("--size", type=int, default=224, help="training resolution in pixels")
    t.add_argument("--seed", type=int, default=0, help="seed of the model init, sample order and augmentation")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (None: the model family's recipe, 1e-2 for UNets, 1e-3 for ResNets)")
    t.add_argument("--schedule", choices=["onecycle", "plateau", "none"], default="onecycle",
                   help="learning-rate schedule: OneCycle per batch, halve on a validation plateau, or constant")
    t.add_argument("--loss-weighting", choices=["fixed", "uncertainty"], default="fixed",
                   help="joint task: fixed loss weights or learned uncertainty weighting")
    t.add_argument("--checkpoint-interval", type=float, default=300.0, help="seconds between mid-epoch checkpoints")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (smoke runs)")
    t.add_argument("--workers", type=int, default=None, help="DataLoader workers (None: the loader's default)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms: a resumed CPU run ends bit-identical to an uninterrupted one")
    t.add_argument("--pretrained", action="store_true", help="ImageNet weights for ResNet encoders (needs internet)")
    t.add_argument("--tensorboard", action="store_true", help="log to TensorBoard in the local cache")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="metrics.json (+ baseline) and a best/worst figure for a run folder",
                       formatter_class=_HelpNames)
    e.add_argument("--run-dir", required=True, help="a trained run folder")
    e.add_argument("--data", required=True, help="dataset folder the run was trained on (its held-out split is "
                   "scored); another dataset is scored whole as unseen data, with the run's own thresholds, into "
                   "metrics-<folder name>.json (refused if it shares a background with the run's training split)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="held-out split to score")
    e.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to score")
    e.add_argument("--perturb", default=None, metavar="NAME", action=_PerturbAction,
                   help="score the split as a real second shot would give it (fg_bg changed, thresholds still chosen "
                        "on clean validation) -> metrics-NAME.json; 'list' shows what each does. NAME: "
                        + _perturb_names())
    e.add_argument("--align", action="store_true",
                   help="register bg to fg_bg (and match its tone and JPEG compression) before the model and the "
                        "baseline see each pair, as predict does -> metrics-<NAME or clean>-aligned.json")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="apply a trained run to your own (bg, fg_bg) photos, any size: one pair, or "
                                        "two folders of pairs matched by file name", **fmt)
    pr.add_argument("--run-dir", required=True, help="a trained run folder")
    pr.add_argument("--bg", required=True, help="the background photo, without the object (or a folder of them)")
    pr.add_argument("--fg-bg", required=True, help="the same photo with the object, same size (or a folder: "
                                                   "kitchen.png here pairs with kitchen.jpg in --bg)")
    pr.add_argument("--out", required=True, help="folder for mask.png, depth.png, alignment.json and prediction.png "
                                                 "(folders: <name>_mask.png, <name>_depth.png and alignment.csv)")
    pr.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to use")
    pr.add_argument("--no-align", action="store_true",
                    help="use bg as it is; otherwise bg is registered to fg_bg, its tone matched and, when fg_bg "
                         "was saved as a much coarser JPEG, saved again like it: each only when confident")
    pr.add_argument("--batch-size", type=int, default=16,
                    help="folders: pairs queued ahead for the 2 worker threads (the model still takes one pair at a "
                         "time, so each result equals the single-pair command's)")
    pr.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="offline end-to-end run on the embedded sample -> report folder (resumes)", **fmt)
    d.add_argument("--out", default="demo_output", help="folder for data, runs and the report")
    d.add_argument("--minutes", type=float, default=10.0, help="rough CPU time budget for the three trainings")
    d.add_argument("--seed", type=int, default=0, help="seed of the build and the trainings")
    d.set_defaults(func=cmd_demo)
    return p


def _close_progress_bars() -> None:
    """End any progress bar an error interrupted, so the error starts on its own line instead of after the bar."""
    tqdm = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"eva: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"


def main(argv: list[str] | None = None) -> int:
    saved, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # a warning is one line too
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = saved


def _unrecognized(parser: argparse.ArgumentParser, argv: list[str], message: str) -> str:
    """argparse reports unknown flags from the top-level parser: name the command's --help and the flag meant."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cmd = next((a for a in argv if a in sub.choices), None)
    if cmd is None or not message.startswith("unrecognized arguments:"):
        return message
    core = message.split(" (see: ")[0]
    flags = [o for action in sub.choices[cmd]._actions for o in action.option_strings]
    unknown = [t.split("=")[0] for t in core.split(":", 1)[1].split() if t.startswith("-")]
    meant = [f"{u}: did you mean {m[0]}?" for u in unknown if (m := difflib.get_close_matches(u, flags, 1, 0.6))]
    return core + (f"; {'; '.join(meant)}" if meant else "") + f" (see: eva {cmd} --help)"


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"eva: error: {_unrecognized(parser, argv, str(e))}", file=sys.stderr)
        return 2
    from eva_helpers.signals import exit_code, sigterm_interrupts, signal_name

    try:
        with sigterm_interrupts():  # SIGTERM (a runtime or scheduler stopping us) takes Ctrl-C's path
            args.func(args)
    except Exception as e:  # noqa: BLE001 - user errors become one line; anything else is a bug and keeps its traceback
        line = user_message(e)
        if line is None:
            raise
        _close_progress_bars()
        print(f"eva {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # what was saved or verified stays; training says which checkpoint it saved
        _close_progress_bars()
        line = str(e) or (f"stopped by {signal_name(getattr(e, 'signum', signal.SIGINT))} (run the same command "
                          "again to resume)")
        print(f"eva {args.command}: {line}", file=sys.stderr)
        return exit_code(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
