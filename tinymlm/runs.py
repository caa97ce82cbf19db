"""What pretraining and fine-tuning runs share: the data order, the run folder, the plot.

**Data order.** The rows of every step come from seeded permutations, one per epoch, so the
data position is a function of the step alone and a resumed run reads exactly what an
uninterrupted one would.

**Checkpoints.** A checkpoint is written whole into ``checkpoints/step-N/`` and then published
by atomically replacing the symlink ``current`` that the run folder's top-level files point
through (``model.safetensors -> current/model.safetensors``). A reader, or a crash at any
moment, sees one step's files together, never the model of one step beside the optimizer state
of another; the run folder itself stays a Hugging Face model folder.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinymlm.fileio import atomic_path


def epoch_rows(seed: int, start: int, count: int, n: int) -> np.ndarray:
    """Rows ``start .. start+count`` of the endless stream of seeded epoch permutations of n."""
    epochs, offsets = np.divmod(np.arange(start, start + count), n)
    return np.array([_epoch_order(seed, int(e), n)[o] for e, o in zip(epochs, offsets)],
                    dtype=np.int64)


def step_rows(seed: int, step: int, micro: int, batch_size: int, grad_accum: int,
              n: int) -> np.ndarray:
    """Rows of micro-batch ``micro`` of optimizer step ``step`` (1-based) among n rows."""
    start = ((step - 1) * grad_accum + micro) * batch_size
    return epoch_rows(seed, start, batch_size, n)


@functools.lru_cache(maxsize=2)  # the current epoch and the next
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def publish_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None]) -> Path:
    """``write(step_dir)`` fills checkpoints/step-N; then it becomes the run's checkpoint."""
    step_dir = run_dir / "checkpoints" / f"step-{step:07d}"
    if step_dir.exists():
        shutil.rmtree(step_dir)
    step_dir.mkdir(parents=True)
    write(step_dir)
    _fsync_dir(step_dir)
    tmp = run_dir / ".current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.join("checkpoints", step_dir.name), tmp)
    os.replace(tmp, run_dir / "current")  # the moment the new checkpoint becomes the checkpoint
    _fsync_dir(run_dir)
    for name in sorted(os.listdir(step_dir)):  # top-level names, through `current`
        top = run_dir / name
        if not top.is_symlink():
            os.symlink(os.path.join("current", name), top)
    for old in (run_dir / "checkpoints").iterdir():
        if old.name != step_dir.name:
            shutil.rmtree(old, ignore_errors=True)
    return step_dir


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plot_curves(run_dir: Path, rows: list[dict], title: str,
                accuracy_label: str = "held-out accuracy") -> None:
    """Training loss, held-out loss and accuracy against the step, into loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r and "eval_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["eval_loss"] for r in evals], "o-", label="held-out loss")
        acc = ax.twinx()
        acc.plot(steps, [r["eval_accuracy"] for r in evals], "s--", color="tab:green",
                 label=accuracy_label)
        acc.set_ylabel(accuracy_label)
        acc.set_ylim(0, 1)
        acc.legend(loc="upper center")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(run_dir / "loss_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
