"""When does a small BERT learn its facts? Held-out fact accuracy every N steps of a run.

The trainer's own pieces (the MLM objective and ``Trainer.training_step``: the same batches,
masks and dropout as ``python -m tinymlm.train``),
with tinyworld's fact probes asked every ``--probe-every`` steps: the held-out phrasings
(knowledge) and a sample of the training phrasings (memory). Any trainer setting can be
changed, which is how the default recipe was chosen (``benchmarks/results/train_default.md``):

    PYTHONPATH=. python benchmarks/fact_curve.py                          # the default recipe
    PYTHONPATH=. python benchmarks/fact_curve.py --masking token --max-length 32 --batch-size 64
    PYTHONPATH=. python benchmarks/fact_curve.py --seed 1 --png /tmp/curve.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from the source tree
    sys.path.insert(0, str(REPO))

from tinymlm import kernels  # noqa: E402
from tinymlm.data import tinyworld  # noqa: E402
from tinymlm.objectives import MaskedLanguageModeling, TrainConfig, build_corpus  # noqa: E402
from tinymlm.objectives.pretraining import fact_scores  # noqa: E402
from tinymlm.train import loop_settings  # noqa: E402
from tinymlm.trainer import Trainer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = TrainConfig()
    for name in ("steps", "batch_size", "max_length", "warmup_steps", "seed", "tinyworld_docs"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lr", "dropout", "mlm_probability", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--masking", default=None)
    p.add_argument("--packing", default=None)
    p.add_argument("--model-size", default=None)
    p.add_argument("--probe-every", type=int, default=200)
    p.add_argument("--png", default=None, help="draw the curves into this file")
    args = vars(p.parse_args(argv))
    probe_every, png = args.pop("probe_every"), args.pop("png")
    cfg = TrainConfig(**{k: v for k, v in args.items() if v is not None})
    cfg.check()
    print(f"settings: { {k: getattr(cfg, k) for k in vars(defaults)} }", flush=True)

    kernels.set_kernels(cfg.kernels)
    corpus = build_corpus(cfg, print)
    tokenizer = corpus.tokenizer
    trainer = Trainer(MaskedLanguageModeling(cfg, corpus), loop_settings(cfg))
    model = trainer.objective.build_model()
    optimizer = trainer.make_optimizer(model)
    heldout = tinyworld.fact_probes("heldout")
    trained = tinyworld.fact_probes("train")
    sample = np.random.default_rng(0).choice(len(trained), 600, replace=False)
    trained = [trained[i] for i in sample]

    curve = []
    start = time.perf_counter()
    model.train()
    for step in range(1, cfg.steps + 1):
        loss, _, _, _ = trainer.training_step(step, model, optimizer)
        if step % probe_every == 0 or step == cfg.steps:
            model.eval()
            held, per_relation = fact_scores(model, tokenizer, heldout)
            memory, _ = fact_scores(model, tokenizer, trained)
            model.train()
            curve.append((step, held, memory))
            relations = " ".join(f"{r}={a:.2f}" for r, a in sorted(per_relation.items()))
            loss_value = float(loss) / cfg.grad_accum  # mean over the micro-batches
            print(f"step {step} ({time.perf_counter() - start:.0f} s) loss {loss_value:.3f}"
                  f" | held-out facts {held:.1%} | training phrasings {memory:.1%} | {relations}",
                  flush=True)
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, held, memory = zip(*curve)
        plt.figure(figsize=(6, 3.5))
        plt.plot(steps, memory, "o-", label="facts in training phrasings")
        plt.plot(steps, held, "s-", label="facts in held-out phrasings")
        plt.xlabel("step")
        plt.ylabel("top-1 accuracy")
        plt.ylim(0, 1)
        plt.legend()
        plt.tight_layout()
        plt.savefig(png, dpi=120)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
