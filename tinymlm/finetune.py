"""Fine-tune BERT on a downstream task: ``python -m tinymlm.finetune --task ... --model DIR``.

    python -m tinymlm.finetune --task verify --model runs/tinyworld-tiny-...   # pretrained
    python -m tinymlm.finetune --task verify --model none                      # random init
    python -m tinymlm.finetune --task my_data.jsonl --model DIR                # your data

Tasks: ``verify`` (is a statement of a fact true?), ``entities`` (the kind of every word) and
``qa`` (a span of a passage answers a question), generated from tinyworld with held-out facts
or phrasings (see ``tinymlm.data.tasks``), or a JSON-lines file of your own examples in the
format documented there (``--task-type`` names its kind when the keys do not; ``--eval FILE``
gives evaluation examples, otherwise a seeded tenth is held out).

``--model DIR`` loads the encoder of a pretrained folder (a training run, a BertModel or a
BertForMaskedLM folder, or a fine-tuned one) and its tokenizer, and puts a new head on it.
``--model none`` trains the same head on a randomly initialised encoder of ``--model-size``
with the tinyworld vocabulary (or ``--vocab``): the "not pretrained" baseline.

Metrics: accuracy for classification; word accuracy and entity F1 for tagging; exact match
and F1 (SQuAD's) for QA, where ``eval_accuracy`` is the exact match. The run folder has the
layout of ``tinymlm.train``'s: a Hugging Face model folder at its top level (through the
``current`` link to ``checkpoints/step-N``), ``finetune_config.json``, ``metrics.jsonl``
(``step, loss, lr, tokens_per_s`` rows and ``eval_*`` rows), ``loss_curve.png`` and the
trainer state, saved at every evaluation: ``--stop-after K`` then ``--resume DIR`` ends with
the bytes of an uninterrupted run, as in pretraining.

``--task retrieval`` (or a .jsonl file of ``{"query", "passage"}`` pairs) trains a sentence
encoder contrastively instead (``tinymlm.objectives.ContrastiveTraining``: InfoNCE with
in-batch negatives, ``--temperature``, ``--learn-temperature``, ``--simcse``, ``--pooling``);
its run folder is a sentence-transformers folder that ``python -m tinymlm.search`` loads.

This module is the command line; the objective is ``tinymlm.objectives.FineTuning`` and the
loop ``tinymlm.trainer``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tinymlm import cli, kernels
from tinymlm.data import tasks as task_data
from tinymlm.errors import UsageError
from tinymlm.fileio import atomic_write_json
from tinymlm.objectives import (
    MODEL_SIZES,
    ContrastiveConfig,
    ContrastiveTraining,
    FinetuneConfig,
    FineTuning,
)
from tinymlm.objectives.contrastive import CONTRASTIVE_OPTIONS, is_retrieval
from tinymlm.trainer import LoopSettings, Trainer

COMMAND = "python -m tinymlm.finetune"
CONFIG_FILE = "finetune_config.json"


def loop_settings(cfg: FinetuneConfig) -> LoopSettings:
    """The trainer's part of a fine-tuning config: AdamW with PyTorch's defaults, a linear
    decay, and a checkpoint at every evaluation."""
    return LoopSettings(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, decay="linear",
        weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, betas=(0.9, 0.999), eps=1e-8,
        log_every=cfg.log_every, eval_every=cfg.eval_every, save_every=cfg.eval_every,
        seed=cfg.seed, kernels=cfg.kernels,
    )


def make_config(**settings) -> FinetuneConfig | ContrastiveConfig:
    """A contrastive config for retrieval (``--task retrieval`` or a file of pairs), a
    fine-tuning one otherwise; the contrastive options are refused there."""
    if is_retrieval(settings.get("task"), settings.get("task_type")):
        return ContrastiveConfig(**settings)
    given = sorted(k for k in CONTRASTIVE_OPTIONS if k in settings)
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} is for --task retrieval (contrastive "
                         "training of a sentence encoder)")
    return FinetuneConfig(**settings)


def make_objective(cfg, log):
    return (ContrastiveTraining if isinstance(cfg, ContrastiveConfig) else FineTuning)(cfg, log)


def _fit(cfg: FinetuneConfig, objective: FineTuning, run_dir: Path, device: str, resume: bool,
         stop_after: int | None, log) -> dict:
    trainer = Trainer(objective, loop_settings(cfg), run_dir, device=device, log=log,
                      command=COMMAND)
    final = trainer.fit(resume=resume, stop_after=stop_after)
    return {"task": objective.task.name, "model": cfg.model, **final}


def finetune(task, model="none", out=None, device: str = "cpu", stop_after: int | None = None,
             **settings) -> dict:
    """Fine-tune ``model`` (a folder, or "none") on ``task`` (a built-in name or a .jsonl file);
    ``settings`` are FinetuneConfig's fields (steps, batch_size, lr, seed, ...). Returns the
    final evaluation metrics; the run folder is ``out`` (default runs/finetune-<task>-<time>)."""
    log = settings.pop("log", None) or cli.log
    cfg = make_config(task=str(task), model=str(model), **settings)
    cfg.check()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = cli.free_run_folder(out, f"runs/finetune-{Path(cfg.task).stem}-{stamp}")
    objective = make_objective(cfg, log)  # bad data is reported before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG_FILE, asdict(cfg))
    log(f"run folder: {run_dir}")
    return _fit(cfg, objective, run_dir, device, False, stop_after, log)


def resume(run_dir, device: str = "cpu", stop_after: int | None = None, log=None) -> dict:
    """Continue the fine-tuning run saved in ``run_dir`` with its saved settings."""
    log = log or cli.log
    cfg = make_config(**cli.saved_settings(Path(run_dir), CONFIG_FILE))
    log(f"run folder: {run_dir}")
    return _fit(cfg, make_objective(cfg, log), Path(run_dir), device, True, stop_after, log)


# --- the command line ----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    d = FinetuneConfig()
    p.add_argument("--task", default=None,
                   help="verify, entities, qa, retrieval, or a .jsonl file of your examples "
                   "(required)")
    p.add_argument("--model", default=None, help="a pretrained model folder, or 'none' for a "
                   "randomly initialised encoder (required)")
    p.add_argument("--task-type", choices=[*task_data.TASK_TYPES, "retrieval"], default=None,
                   help="the kind of a .jsonl task (default: guessed from its keys)")
    p.add_argument("--eval", dest="eval_data", default=None, metavar="FILE",
                   help="evaluation examples for a .jsonl task (default: a tenth held out)")
    p.add_argument("--vocab", default=None, help="vocab.txt for --model none (default tinyworld's)")
    p.add_argument("--model-size", choices=list(MODEL_SIZES), default=None,
                   help=f"the encoder of --model none, default {d.model_size}")
    for name, kind in [("steps", int), ("batch-size", int), ("max-length", int), ("lr", float),
                       ("warmup-steps", int), ("weight-decay", float), ("clip-norm", float),
                       ("eval-every", int), ("log-every", int), ("seed", int)]:
        default = getattr(d, name.replace("-", "_"))
        p.add_argument(f"--{name}", type=kind, default=None, help=f"default {default}")
    p.add_argument("--kernels", choices=list(kernels.MODES), default=None)
    c = ContrastiveConfig()  # --task retrieval only
    p.add_argument("--pooling", choices=["mean", "cls"], default=None,
                   help=f"retrieval: how tokens become a sentence vector, default {c.pooling}")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"retrieval: InfoNCE's temperature (its start when learned), default "
                   f"{c.temperature}")
    p.add_argument("--learn-temperature", action="store_true", default=None,
                   help="retrieval: train the temperature with the model")
    p.add_argument("--simcse", action="store_true", default=None,
                   help="retrieval: each passage is its own positive, through other dropout")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None,
                   help="the run folder (default runs/finetune-<task>-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="save after step K and exit (as an interruption would)")
    return p.parse_args(argv)


def run(args) -> None:
    device = cli.check_device(args.device)
    cli.check_stop_after(args.stop_after)
    start = time.perf_counter()
    if args.resume:
        cli.check_resume_alone(args)
        result = resume(args.resume, device, args.stop_after)
    else:
        for name in ("task", "model"):
            if getattr(args, name) is None:
                raise UsageError(f"--{name} is required (or --resume DIR to continue a run)")
        settings = {k: v for k, v in vars(args).items() if v is not None
                    and k not in ("task", "model", "out", "device", "resume", "stop_after")}
        result = finetune(args.task, args.model, out=args.out, device=device,
                          stop_after=args.stop_after, **settings)
    cli.log(f"done in {time.perf_counter() - start:.0f} s")
    print(json.dumps(result))


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
