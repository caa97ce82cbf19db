"""Pretrain a small BERT with masked language modeling: ``python -m tinymlm.train``.

With no options it trains on tinyworld, the built-in corpus of facts, on the CPU in a few
minutes, then shows what the model learned ("Paris is the capital of [MASK]." -> france) and
its fact accuracy on phrasings it never read. ``--corpus PATH ...`` trains on your own text.

The run folder (printed at the start) is a Hugging Face model folder at its top level
(config.json, model.safetensors, vocab.txt, tokenizer_config.json) plus train_config.json,
metrics.jsonl, loss_curve.png and the trainer state. Checkpoints are written whole into
``checkpoints/step-N/`` and published by atomically replacing the ``current`` link that the
top-level files point through, so a reader (or a crash) never mixes two steps.

Reproducible: every random choice is seeded from ``--seed`` and the step number, so
``--stop-after K`` followed by ``--resume DIR`` ends with the same bytes as one run.

``--objective electra`` pretrains ELECTRA instead (``tinymlm/objectives/electra.py``): a
generator of ``--generator-size`` times the width fills in the masked tokens and the model that
is trained and saved at the top of the run folder is the discriminator, a BERT encoder to
fine-tune. The generator and the discriminator's head are kept beside it in
``electra.safetensors``.

``--objective clm`` trains the autoregressive twin, ``BertLMHeadModel`` (causal attention, the
next-token loss; ``tinymlm/objectives/causal.py``), on the same data at the same sizes; try it
with ``python -m tinymlm.generate --model DIR "The capital of France is"``.

``mpiexec -n K python -m tinymlm.train ...`` trains with K data-parallel processes
(``tinymlm/distributed.py``): ``--batch-size`` is summed over them, each takes a slice of the
same global batch, and the run equals the one-process run up to rounding (with dropout: in
distribution, each process draws its own masks).

This module is the command line; the objectives are in ``tinymlm.objectives`` and the loop in
``tinymlm.trainer``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tinymlm import cli, distributed, kernels
from tinymlm.data.masking import STRATEGIES
from tinymlm.errors import UsageError
from tinymlm.fileio import atomic_write_json
from tinymlm.objectives import MODEL_SIZES, PRETRAINING, TrainConfig, build_corpus
from tinymlm.trainer import LoopSettings, Trainer

COMMAND = "python -m tinymlm.train"


def loop_settings(cfg: TrainConfig) -> LoopSettings:
    """The trainer's part of a pretraining config (AdamW as BERT and RoBERTa pretrain)."""
    return LoopSettings(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, decay=cfg.decay,
        weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, grad_accum=cfg.grad_accum,
        betas=(0.9, 0.98), eps=1e-6, log_every=cfg.log_every, eval_every=cfg.eval_every,
        save_every=cfg.save_every, seed=cfg.seed, kernels=cfg.kernels,
    )


def pretraining(cfg: TrainConfig, log=print):
    """The objective ``cfg.objective`` names, with its corpus."""
    return PRETRAINING[cfg.objective](cfg, build_corpus(cfg, log))


def train(cfg: TrainConfig, run_dir: Path, device: str = "cpu", resume: bool = False,
          stop_after: int | None = None, log=print, objective=None, world=None,
          results=None) -> dict:
    """Train (or continue) the run in ``run_dir``; returns the final metrics. ``log`` gets the
    progress, ``results`` (default ``log``) what the finished run found."""
    trainer = Trainer(objective or pretraining(cfg, log), loop_settings(cfg), run_dir,
                      device=device, log=log, command=COMMAND, world=world, results=results)
    return trainer.fit(resume=resume, stop_after=stop_after)


def parse_args(argv):
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    d = TrainConfig()
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--corpus", nargs="+", default=None,
                   help="tinyworld (default) or UTF-8 text files / folders")
    p.add_argument("--model-size", choices=list(MODEL_SIZES), default=None)
    for name, kind in [("steps", int), ("batch-size", int), ("max-length", int), ("lr", float),
                       ("grad-accum", int), ("eval-every", int), ("save-every", int),
                       ("log-every", int), ("seed", int), ("warmup-steps", int),
                       ("weight-decay", float), ("clip-norm", float), ("dropout", float),
                       ("mlm-probability", float), ("vocab-size", int), ("tinyworld-docs", int)]:
        default = getattr(d, name.replace("-", "_"))
        if name == "max-length":
            default = "16 on tinyworld, 128 on other corpora"
        p.add_argument(f"--{name}", type=kind, default=None, help=f"default {default}")
    p.add_argument("--objective", choices=list(PRETRAINING), default=None,
                   help="mlm (default), electra (generator + replaced-token detection) or "
                        "clm (left-to-right next-token prediction)")
    p.add_argument("--generator-size", type=float, default=None,
                   help=f"electra: generator width / model width, default {d.generator_size}")
    p.add_argument("--electra-weight", type=float, default=None,
                   help=f"electra: λ in loss = MLM + λ·RTD, default {d.electra_weight}")
    p.add_argument("--decay", choices=["linear", "cosine", "constant"], default=None)
    p.add_argument("--masking", choices=["auto", *STRATEGIES], default=None,
                   help="auto (default): salient for MLM on tinyworld, token otherwise")
    p.add_argument("--packing", choices=["sentences", "stream"], default=None,
                   help="sentences (default): whole sentences per sequence; stream: cut anywhere")
    p.add_argument("--kernels", choices=list(kernels.MODES), default=None)
    p.add_argument("--vocab", default=None, help="a vocab.txt to use instead of training one")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue pretraining a Hugging Face BERT folder (its architecture, "
                        "vocabulary and weights; a fresh MLM head if it has none)")
    p.add_argument("--out", default=None,
                   help="the run folder (default runs/<corpus>-<size>-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="save after step K and exit (as an interruption would)")
    p.add_argument("--distributed", choices=["auto", "none"], default=None,
                   help="auto (default): data-parallel over the processes mpiexec started; "
                        "none: one process")
    return p.parse_args(argv)


def config_from_args(args) -> TrainConfig:
    settings = {k: v for k, v in vars(args).items()
                if k not in ("device", "out", "resume", "stop_after", "distributed")
                and v is not None}
    cfg = TrainConfig(**settings)
    cfg.check()
    beside_init = [k for k in ("model_size", "vocab", "vocab_size") if k in settings]
    if cfg.init and beside_init:
        raise UsageError(f"--init takes the architecture and vocabulary of {cfg.init}: leave "
                         f"--{beside_init[0].replace('_', '-')} out")
    electra_only = [k for k in ("generator_size", "electra_weight") if k in settings]
    if electra_only and cfg.objective != "electra":
        raise UsageError(f"--{electra_only[0].replace('_', '-')} is a setting of "
                         "--objective electra only")
    if cfg.corpus != ["tinyworld"]:
        missing = [c for c in cfg.corpus if not Path(c).exists()]
        if missing:
            raise UsageError(f"corpus not found: {missing[0]}; give text files or folders, or "
                             "leave --corpus out to use tinyworld")
    return cfg


def run(args) -> None:
    device = cli.check_device(args.device)
    world = distributed.init(args.distributed or "auto", device)
    log = cli.log if world.is_main else (lambda message: None)  # rank 0 speaks for all
    cli.check_stop_after(args.stop_after)
    if args.resume:
        cli.check_resume_alone(args)
        run_dir = Path(args.resume)
        cfg = TrainConfig(**cli.saved_settings(run_dir, "train_config.json"))
        world.check_batch(cfg.batch_size)
        objective = pretraining(cfg, log)
    else:
        cfg = config_from_args(args)
        world.check_batch(cfg.batch_size)
        name = "tinyworld" if cfg.corpus == ["tinyworld"] else Path(cfg.corpus[0]).stem
        size = f"from-{Path(cfg.init).resolve().name}" if cfg.init else cfg.model_size
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # Rank 0 names the folder (the time stamp) and checks it is free; every rank uses it.
        run_dir = world.decide(lambda: cli.free_run_folder(
            args.out, f"runs/{name}-{size}-{stamp}"))
        objective = pretraining(cfg, log)  # bad data is reported before anything is written
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "train_config.json", asdict(cfg))
    log(f"run folder: {run_dir}" + (f" ({world.size} processes)" if world.size > 1 else ""))
    start = time.perf_counter()
    results = print if world.is_main else log  # what the run found goes to stdout
    final = train(cfg, run_dir, device, bool(args.resume), args.stop_after, log, objective, world,
                  results)
    evaluation = {k: v for k, v in final.items() if k.startswith("eval_")}
    if final["step"] == cfg.steps and evaluation:
        results(f"final, step {cfg.steps}: {objective.report(evaluation)}")
    if cfg.objective == "electra":
        log(f"done in {time.perf_counter() - start:.0f} s; {run_dir} holds the discriminator, "
            "a BERT encoder: BertModel.from_pretrained(run_dir), then fine-tune it")
    elif cfg.objective == "clm":
        log(f"done in {time.perf_counter() - start:.0f} s; try: python -m tinymlm.generate "
            f"--model {run_dir} \"The capital of France is\"")
    else:
        log(f"done in {time.perf_counter() - start:.0f} s; try: python -m tinymlm.fill_mask "
            f"--model {run_dir} \"Paris is the capital of [MASK].\"")


def main(argv=None) -> int:
    args = parse_args(argv)
    # Under mpiexec every rank meets the same bad input; rank 0 alone says so (one line).
    others = args.distributed != "none" and distributed.launched_rank() != 0
    return cli.run_command(lambda: run(args), quiet=others)


if __name__ == "__main__":
    sys.exit(main())
