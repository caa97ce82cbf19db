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
import json
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
    """The run's curves against the step, into loss_curve.png, in two panels: the losses
    (training, held-out) and the accuracies (held-out, and tinyworld's fact questions once the
    run has asked them). Each curve says how its tokens were hidden: training and held-out
    masking may differ (salient masking trains, token masking evaluates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_how, eval_how = _masking(run_dir)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r and "eval_accuracy" in r]
    facts = [r for r in rows if "fact_accuracy" in r]
    fig, (losses, accuracies) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    losses.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1,
                label=f"training loss{train_how}")
    if evals:
        losses.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-",
                    label=f"held-out loss{eval_how}")
        accuracies.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "s-",
                        color="tab:green", label=f"{accuracy_label}{eval_how}")
    for key, label, marker, color in _QUESTIONS:  # asked once, after the last step
        for r in (r for r in facts if key in r):
            accuracies.plot([r["step"]], [r[key]], marker, ms=12, mew=2, mfc="none",
                            color=color, label=f"{label}: {r[key]:.1%}")  # hollow: both show
    losses.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title="losses")
    accuracies.set(xlabel="optimizer step", ylabel="top-1 accuracy", ylim=(0, 1.02),
                   title="accuracies")
    for ax in (losses, accuracies):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run stopped before its first evaluation has none
            ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    with atomic_path(run_dir / "loss_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# tinyworld's questions, asked with fill-mask (one [MASK], no masking of the rest) at the end.
_QUESTIONS = [
    ("fact_accuracy", "held-out fact questions (one [MASK])", "*", "tab:red"),
    ("everyday_accuracy", "everyday questions (one [MASK])", "D", "tab:purple"),
]


def _masking(run_dir: Path) -> tuple[str, str]:
    """How the training and the held-out tokens were hidden, from the run's settings, as
    label suffixes: " (salient masking)", " (token masking)"; empty where unknown."""
    try:
        settings = json.loads((Path(run_dir) / "train_config.json").read_text())
    except (OSError, ValueError):
        return "", ""  # a fine-tuning run: its labels are given, nothing is masked
    if settings.get("objective") == "clm":
        return " (next token)", " (next token)"
    return f" ({settings.get('masking', 'token')} masking)", " (token masking)"
