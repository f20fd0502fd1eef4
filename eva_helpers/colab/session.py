"""The start and the end of every notebook: what machine this is, where files go, and a flush before the tab closes.

`start()` prints an environment banner (GPU, RAM, disk, versions) so a user sees at once whether the runtime is the one
they asked for (a reconnect can silently land on a CPU runtime), mounts Drive (`paths.mount_drive`) and makes user
errors (`EvaError`) print one line in the notebook instead of a traceback. `finish()` forces Drive to upload what was
written (`drive.flush_and_unmount()`: Drive writes sync late, so the last checkpoint may otherwise never arrive).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from eva_helpers.paths import DRIVE_MOUNT, Paths, in_colab, mark_drive_unmounted, mount_drive


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _ram_bytes() -> tuple[int, int] | None:
    """(total, available) bytes of RAM from /proc/meminfo (Linux: Colab), None elsewhere."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def environment() -> dict[str, str]:
    """What this runtime offers, as short strings: gpu, ram, disk, cpus and library versions."""
    import importlib.metadata as md

    import torch

    from eva_helpers import __version__

    env: dict[str, str] = {}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        from eva_helpers.precision import amp_dtype
        from eva_helpers.training.sessions import precision_name

        env["gpu"] = (f"{p.name} ({_gib(p.total_memory)}), CUDA {torch.version.cuda}, compute {p.major}.{p.minor}, "
                      f"trains in {precision_name(amp_dtype('cuda'))}")
    else:
        env["gpu"] = "none (CPU runtime: Runtime > Change runtime type > GPU for training and the depth teacher)"
    ram = _ram_bytes()
    env["ram"] = f"{_gib(ram[1])} free of {_gib(ram[0])}" if ram else "unknown"
    disk = shutil.disk_usage("/content" if Path("/content").is_dir() else Path.cwd())
    env["disk"] = f"{_gib(disk.free)} free of {_gib(disk.total)} (local)"
    env["cpus"] = str(os.cpu_count())
    versions = [f"python {sys.version.split()[0]}", f"eva_helpers {__version__}", f"torch {torch.__version__}"]
    for dist in ("torchvision", "numpy", "albumentations", "transformers"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    env["versions"] = ", ".join(versions)
    from eva_helpers.training.run_folder import describe_code, installed_code

    env["code"] = describe_code(installed_code())
    return env


def banner() -> str:
    """environment(), one line each; eva_helpers' version once, on the code line beside its commit."""
    env = environment()
    env["versions"] = ", ".join(v for v in env["versions"].split(", ") if not v.startswith("eva_helpers "))
    return "\n".join(f"{k:9s}{v}" for k, v in env.items())


def _one_line_error(shell, etype, value, tb, tb_offset=None):  # IPython custom exception handler
    """The CLI's one line (errors.user_message: a DataLoader worker's traceback unwrapped, an OSError's file and what to
    do); an error that is not the user's keeps its traceback."""
    from eva_helpers.errors import user_message

    line = user_message(value)
    if line is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    else:
        print(f"error: {line}", file=sys.stderr)
    return None


def start(root: str | os.PathLike | None = None) -> Paths:
    """Banner, Drive (or a local folder), folders; user errors in later cells print one line. Returns the Paths."""
    print(banner())
    paths = mount_drive(root)
    print(paths)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        from eva_helpers.errors import EvaError

        shell.set_custom_exc((EvaError, OSError), _one_line_error)  # the cell still fails: "Run all" stops there
    return paths


def finish(paths: Paths | None = None, unmount: bool | None = None) -> str:
    """Force Drive to upload everything written so far (Colab); elsewhere nothing to do. Returns what it did.

    `drive.flush_and_unmount()` also unmounts: run this last (run `start()` again to keep working).
    """
    on_drive = paths.on_drive if paths is not None else Path(DRIVE_MOUNT / "MyDrive").is_dir()
    if unmount is None:
        unmount = in_colab() and on_drive
    if not unmount:
        msg = "nothing to flush: files are on local disk" if not on_drive else "Drive left mounted (unmount=False)"
    else:
        from google.colab import drive  # type: ignore

        drive.flush_and_unmount()
        mark_drive_unmounted()  # a later cell that writes to Drive stops and says to run start() again
        msg = "Drive flushed and unmounted: every file written is uploaded (run the environment cell, paths = start(), again to continue)"
    print(msg)
    return msg
