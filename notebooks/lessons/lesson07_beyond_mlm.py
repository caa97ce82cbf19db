"""Lesson 7: what pretraining is for, and beyond BERT's objective (ELECTRA)."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 7 — What pretraining is for, and beyond MLM

Nobody wants a model that fills in blanks. Pretraining is a means: an encoder that has learned
from raw text how words relate is a good starting point for the tasks people do want, with a
small new **head** on top, trained briefly on labelled examples (**fine-tuning**). This lesson
fine-tunes on three kinds of task, looks at what masked language modeling does poorly, and runs
ELECTRA, which answers two of its weaknesses — all small, with tinymlm's own code
(`tinymlm.nn.heads`, `tinymlm.finetune`, `tinymlm.nn.electra`).
"""),
    code(r"""
import os
import tempfile
import numpy as np
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from tinymlm import backend
from tinymlm.data import MLMCollator
from tinymlm.nn.electra import ElectraForPretraining, generator_config
from tinymlm.finetune import finetune
from tinymlm.optim import AdamW, clip_grad_norm_, param_groups
from tinymlm.objectives import TrainConfig, bert_config, build_corpus

workdir = tempfile.mkdtemp(prefix="tinymlm-lesson7-")
"""),
    md(r"""
## 1. Three heads on one encoder

The encoder turns $S$ tokens into $S$ vectors $h_1, \dots, h_S$. A task needs only a small
layer that reads them:

| task | head | reads | loss |
| --- | --- | --- | --- |
| classification (is this statement true?) | $W h_{\text{[CLS]}}$ (after the pooler) | one vector per sequence | cross-entropy over classes |
| tagging (what kind of entity is each word?) | $W h_s$ | every token | cross-entropy per token (−100 on pieces and padding) |
| extractive QA (which span answers?) | $(w_{\text{start}} \cdot h_s,\; w_{\text{end}} \cdot h_s)$ | every token | cross-entropy of the start and of the end position |

`tinymlm.finetune` builds these tasks from tinyworld (with held-out facts), puts the head on an
encoder and trains it. Here the encoder starts **random** (`model="none"`), for a minute in all:
the point is the mechanics. Start it from a pretrained folder (`model="runs/<a run>"`) to see
what pretraining buys.
"""),
    code(r"""
results = {}
for task in ("verify", "entities", "qa"):
    results[task] = finetune(task, model="none", out=os.path.join(workdir, task), steps=60,
                             eval_every=60, log=lambda message: None)
    metrics = {k: round(v, 3) for k, v in results[task].items() if k.startswith("eval_")}
    print(f"{task:9s}", metrics)

for task, result in results.items():
    for name, value in result.items():
        if name.startswith("eval_") and name != "eval_loss":
            assert 0.0 <= value <= 1.0, (task, name)
assert results["entities"]["eval_accuracy"] > 0.5     # most words are tagged right...
assert results["qa"]["eval_exact_match"] > 0.05        # ...and some answers found exactly
assert abs(results["verify"]["eval_accuracy"] - 0.5) < 0.1   # but facts: a coin toss
"""),
    md(r"""
Look at the three numbers. Tagging and QA make progress from a random encoder within a
minute: the kind of a word and the place of an answer can be read off the surface of the
sentence. **Verifying a fact** ("Paris is the capital of Peru." — true or false?) stays at
chance: the examples hold held-out facts, so the only way to judge them is to *know* them, and
that knowledge is what pretraining is supposed to put into the encoder.
"""),
    md(r"""
## 2. What masked language modeling does poorly

1. **Only the masked 15% teach.** Every token is read, but the loss — the only signal — comes
   from the predicted positions. Raising the rate much beyond 15% removes too much context.
2. **`[MASK]` exists only in pretraining.** Fine-tuning and use never show it (lesson 1); the
   80/10/10 rule softens the mismatch but does not remove it.
3. **Masked tokens are predicted independently.** In "[MASK] [MASK] is a city", each blank is
   guessed without knowing the other's guess.
4. **It does not generate.** An encoder fills blanks in a fixed-length text; it does not write.

ELECTRA (Clark et al., 2020) answers the first two with **replaced-token detection**. A small
MLM *generator* fills the masked positions with plausible samples; the *discriminator* — the
model we keep — reads the result, with no `[MASK]` in it, and says for **every** token whether
it is original or replaced:
$$\ell = \ell_{\text{MLM}}(\text{generator}) + \lambda\, \ell_{\text{RTD}}(\text{discriminator}),
\qquad \lambda = 50 .$$
"""),
    code(r"""
cfg = TrainConfig(model_size="tiny", batch_size=16, max_length=32, tinyworld_docs=800, seed=0)
corpus = build_corpus(cfg, print)
tok = corpus.tokenizer
discriminator_config = bert_config(cfg.model_size, len(tok), cfg.max_length, cfg.dropout)
backend.manual_seed(cfg.seed)
electra = ElectraForPretraining(discriminator_config, generator_config(discriminator_config, 0.25),
                                special_token_ids=tok.all_special_ids)
collate = MLMCollator(tok, seed=0)
batch = collate(corpus.train_ids[:cfg.batch_size], corpus.train_mask[:cfg.batch_size])
backend.manual_seed(0)
out = electra(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])

original = np.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
row = 0
print("original :", tok.decode(original[row].tolist()))
print("masked   :", tok.decode(batch["input_ids"][row].tolist()))
print("corrupted:", tok.decode(out.corrupted_ids[row].tolist()))

real = batch["attention_mask"] == 1
mlm_teaching = (batch["labels"] != -100).sum()
rtd_teaching = (out.rtd_labels != -100).sum()
print(f"positions with a loss: MLM {mlm_teaching}, RTD {rtd_teaching} "
      f"({rtd_teaching / mlm_teaching:.1f} times as many)")
assert not (out.corrupted_ids == tok.mask_token_id).any()          # no [MASK] reaches it
assert rtd_teaching == real.sum()                                   # every real token teaches
replaced = out.rtd_labels == 1
assert (batch["labels"][replaced] != -100).all()                    # only masked ones change
assert (out.corrupted_ids[replaced] != original[replaced]).all()
"""),
    md(r"""
Train it for a few dozen steps. The RTD loss starts at $\log 2$ (the discriminator's logits
are near 0: "50/50") and falls as it learns, first that most tokens are original, then which
are not.
"""),
    code(r"""
optimizer = AdamW(param_groups(electra, 0.01), lr=2e-3, betas=(0.9, 0.98), eps=1e-6)
rng = np.random.default_rng(0)
history = []
for step in range(1, 41):
    rows = rng.integers(len(corpus.train_ids), size=cfg.batch_size)
    batch = collate(corpus.train_ids[rows], corpus.train_mask[rows])
    backend.manual_seed(step)                      # the generator's samples: reproducible
    out = electra(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    clip_grad_norm_(electra.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    history.append((out.mlm_loss.item(), out.rtd_loss.item(), float(out.rtd_accuracy)))

mlm, rtd, accuracy = map(np.array, zip(*history))
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
for ax, values, title in zip(axes, (mlm, rtd, accuracy),
                             ("generator: MLM loss", "discriminator: RTD loss", "RTD accuracy")):
    ax.plot(range(1, len(values) + 1), values); ax.set_title(title); ax.set_xlabel("step")
axes[1].axhline(np.log(2), color="grey", ls="--", label="log 2"); axes[1].legend()
plt.tight_layout(); plt.show()
assert abs(rtd[0] - np.log(2)) < 0.1
assert rtd[-5:].mean() < rtd[:5].mean() and mlm[-5:].mean() < mlm[:5].mean()
"""),
    md(r"""
The discriminator is an ordinary `BertModel`: `electra.save_discriminator(path)` writes a
Hugging Face BERT folder that `finetune(..., model=path)` fine-tunes like any other.

## 3. The comparison

The beyond-MLM comparison (MLM against ELECTRA, each fine-tuned on the three tasks, and both
against a random encoder) is measured by the project's benchmark scripts and written to
`benchmarks/results/`; the table found there is shown and plotted below.
"""),
    code(r"""
import json

path = "../benchmarks/results/beyond_mlm.json"
if not os.path.exists(path):
    print("note: no beyond-MLM comparison in benchmarks/results/ yet: "
          "run python benchmarks/beyond_mlm.py")
else:
    report = json.load(open(path, encoding="utf-8"))
    print(report["command"], "|", report["machine"]["date"])
    # one panel per task: each encoder's held-out score, mean ± std over seeds, and each seed
    metric_of = {"verify": "eval_accuracy", "entities": "eval_entity_f1", "qa": "eval_f1"}
    tasks = [t for t in metric_of if t in report["table"]]
    encoders = ["none", "mlm", "electra"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2))
    for ax, task in zip(np.atleast_1d(axes), tasks):
        cells = report["table"][task][metric_of[task]]
        means = [cells[e]["mean"] for e in encoders]
        stds = [cells[e]["std"] for e in encoders]
        ax.bar(encoders, means, yerr=stds, color=["grey", "tab:blue", "tab:orange"], alpha=0.6)
        for i, e in enumerate(encoders):
            ax.plot([i] * len(cells[e]["values"]), cells[e]["values"], "k.", ms=4)
        ax.set_title(f"{task}: {metric_of[task].removeprefix('eval_')}")
        ax.set_ylim(0, 1)
    plt.tight_layout(); plt.show()
    display(Markdown(report["notes"]))
    entities = report["table"]["entities"]["eval_entity_f1"]
    # what the table says: on entity typing, MLM pretraining beats no pretraining
    assert entities["mlm"]["mean"] > entities["none"]["mean"]
"""),
    md(r"""
## Summary

* Pretraining is for fine-tuning: one encoder, a small head per task (classification on
  `[CLS]`, tagging on every token, QA as start/end scores).
* MLM learns from 15% of the tokens and shows `[MASK]`, which later never appears; its blanks
  are predicted independently and it does not generate.
* ELECTRA's replaced-token detection gives every token a loss and keeps `[MASK]` away from the
  model that is kept.
"""),
]
