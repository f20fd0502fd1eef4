"""`eva build | fetch | stats | train | eval | predict | demo`: the same functions the notebooks call.

User errors print one line naming the file or flag at fault and exit 2, with no traceback: EvaError, OSError (a full
disk, a permission refused, a path through a file), the same re-raised from a DataLoader worker, and a command line
argparse cannot read. Ctrl-C and SIGTERM stop every command the same way, in one line, exiting 130 and 143 (training
saves a checkpoint at that step first). Heavy imports happen per command.
"""
from __future__ import annotations

import argparse
import signal
import sys
import warnings

from eva_helpers.cli.parser import build_parser
from eva_helpers.errors import UsageError, user_message


def _close_progress_bars() -> None:
    """End any progress bar an error interrupted, so the error starts on its own line instead of after the bar."""
    tqdm = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"eva: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"


# What running a stopped command again does: build, fetch, train and demo pick up what they kept; these start over.
STARTS_OVER = {
    "eval": "nothing resumes: the same command again scores every image from the start",
    "predict": "nothing resumes: the same command again predicts every pair from the start",
    "stats": "nothing resumes: the same command again reads the dataset from the start",
}


def _rerun(command: str) -> str:
    return STARTS_OVER.get(command, "run the same command again to resume")


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
    from eva_helpers.signals import exit_code, signal_name, sigterm_interrupts

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
        line = str(e) or f"stopped by {signal_name(getattr(e, 'signum', signal.SIGINT))} ({_rerun(args.command)})"
        print(f"eva {args.command}: {line}", file=sys.stderr)
        return exit_code(e)
    return 0
