"""What the command lines share: checking options, the run folder, and reporting bad input.

A ``UsageError`` (bad input: an option, a file, a folder) ends the command with exit status 2
and one line on stderr that says what is wrong and what to do. Any other exception is a bug
and shows its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tinymlm import backend
from tinymlm.errors import UsageError


def log(message: str) -> None:
    """Progress and messages go to stderr, so stdout holds only results."""
    print(message, file=sys.stderr, flush=True)


def run_command(command: Callable[[], None], quiet: bool = False) -> int:
    """Run ``command``; a UsageError becomes ``error: ...`` on stderr and exit status 2
    (``quiet``: the status alone, where another process reports the error)."""
    try:
        command()
        return 0
    except UsageError as e:
        if not quiet:
            print(f"error: {e}", file=sys.stderr)
        return 2


def check_device(name: str) -> str:
    """'cpu' or 'cuda', where CUDA is asked for only on a machine that has it."""
    try:
        device = backend.normalize_device(name)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from e
    if device == "cuda" and not backend.cuda_available():
        raise UsageError("--device cuda: no usable CUDA GPU with CuPy here; "
                         f"{backend.CUPY_INSTALL_HINT}")
    return device


def check_stop_after(stop_after: int | None) -> None:
    if stop_after is not None and stop_after < 1:
        raise UsageError(f"--stop-after must be a positive step number, got {stop_after}")


def check_resume_alone(args) -> None:
    """Beside ``--resume`` only ``--stop-after`` and ``--device`` may be given (argparse
    defaults of None mark the options left out)."""
    given = [k for k, v in vars(args).items()
             if v is not None and k not in ("device", "resume", "stop_after", "distributed")]
    if given:
        raise UsageError("--resume continues a run with its saved settings: only "
                         "--stop-after, --device and --distributed may be given beside it")


def saved_settings(run_dir: Path, name: str) -> dict:
    """The settings file ``name`` of a run folder to continue (``--resume``)."""
    config_file = Path(run_dir) / name
    if not config_file.is_file():
        raise UsageError(f"{run_dir} is not a tinymlm run folder (no {name})")
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{config_file} is damaged ({e}); restore it or start a new run") from e


def free_run_folder(out: str | None, default: str) -> Path:
    """The run folder of a new run (the caller makes it once its input is read).

    A folder that holds a checkpoint is refused: continue it with ``--resume``. One that holds
    none (a run that died before its first save, even by kill -9) is reused; what it left is
    overwritten by the new run. A folder holding other files, and a path through a file or
    into a folder that cannot be written, are refused.
    """
    run_dir = Path(out or default)
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists() or p == Path("."))
    if not existing.is_dir():
        raise UsageError(f"--out {run_dir}: {existing} is not a folder; choose another "
                         "--out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {run_dir}: cannot write in {existing}; choose another --out")
    current = run_dir / "current"  # the run folder's checkpoint (tinymlm.runs)
    if current.is_symlink() or current.exists():
        raise UsageError(f"run folder {run_dir} already holds a checkpoint: use --resume "
                         f"{run_dir} to continue it, or choose another --out")
    if run_dir.is_dir():
        others = sorted(p.name for p in run_dir.iterdir() if not _left_by_a_run(p.name))
        if others:
            raise UsageError(f"run folder {run_dir} already exists and holds files that are "
                             f"not a run's ({others[0]}): choose another --out")
    return run_dir


# What a run writes before its first checkpoint: its settings, its log, the plot, a checkpoint
# half written, and the temporary files of atomic writes (".NAME.xxxx.tmp").
_RUN_FILES = {"train_config.json", "finetune_config.json", "metrics.jsonl", "loss_curve.png",
              "checkpoints"}


def _left_by_a_run(name: str) -> bool:
    return name in _RUN_FILES or (name.startswith(".") and name.endswith(".tmp"))
