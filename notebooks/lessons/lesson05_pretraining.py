"""Lesson 5: pretraining a small BERT on tinyworld."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 5 — Pretraining a small BERT

Time to train. This lesson runs the training loop of `python -m tinymlm.train` one step at a
time, in the open, on **tinyworld** — tinymlm's built-in corpus of true facts written as
English — with a *tiny* BERT (2 layers, hidden size 128) small enough for a laptop CPU:

1. the data: packed sequences and dynamic masking (lesson 1);
2. the yardstick: the **unigram baseline**, the loss of a model that ignores the context;
3. **sparse prediction**: computing the output layer only where there is a label;
4. **salient masking**: choosing the masks so that facts are asked for;
5. the loop: AdamW, learning-rate warmup and decay, gradient clipping;
6. curves that update while it trains, and fill-mask predictions along the way.

The run here takes two or three minutes on a laptop; the command line runs the same loop, with
the same settings, for longer.
"""),
    code(r"""
import time
import numpy as np

STEPS = 1300
import matplotlib.pyplot as plt
from IPython.display import display

from tinymlm import backend
from tinymlm.data import MLMCollator
from tinymlm.fill_mask import fill_mask
from tinymlm.optim import AdamW, clip_grad_norm_, lr_at, param_groups
from tinymlm.objectives import MaskedLanguageModeling, TrainConfig, build_corpus, make_collator

# the command line's defaults (batch 128 of 16 tokens, lr 3e-3, salient masking), run shorter
cfg = TrainConfig(steps=STEPS, tinyworld_docs=3000, dropout=0.0, seed=0)
corpus = build_corpus(cfg, print)
tok = corpus.tokenizer
print(f"{len(corpus.train_ids)} training and {len(corpus.eval_ids)} held-out sequences "
      f"of {cfg.max_length} tokens; vocabulary {len(tok)}")
print(tok.decode(corpus.train_ids[0].tolist()))
"""),
    md(r"""
## 1. The unigram baseline

What loss should we expect? A model that ignores the context can at best predict each masked
token with its overall frequency $f_w$ in the training text. Its cross-entropy on held-out
masked tokens,
$$\ell_{\text{unigram}} = -\frac1M \sum_{i} \log f_{y_i},$$
is the line a real model must get below: everything under it is learned from context.
"""),
    code(r"""
collate_for_counts = MLMCollator(tok, seed=123)
train_labels = collate_for_counts(corpus.train_ids, corpus.train_mask)["labels"]
counts = np.bincount(train_labels[train_labels != -100], minlength=len(tok)) + 0.5   # smoothed
frequency = counts / counts.sum()
held_out = MLMCollator(tok, seed=cfg.seed + 1_000_003)(corpus.eval_ids, corpus.eval_mask)["labels"]
unigram_loss = -np.log(frequency[held_out[held_out != -100]]).mean()
unigram_accuracy = (held_out[held_out != -100] == frequency.argmax()).mean()
print(f"unigram baseline: loss {unigram_loss:.3f} nats, accuracy {unigram_accuracy:.1%} "
      f"(always '{tok.convert_ids_to_tokens(int(frequency.argmax()))}')")
"""),
    md(r"""
## 2. The model, and sparse prediction

BERT's output layer maps each hidden vector ($H$) to scores over the vocabulary ($V$): it costs
$2HV$ operations per position. Only the ~15% of positions that carry a label need it, so
`BertForMaskedLM` gathers those $M$ rows first and runs the head on them alone (Google's BERT
did the same). The loss is identical; the head's cost drops by a factor $BS/M \approx 6.7$.
"""),
    code(r"""
objective = MaskedLanguageModeling(cfg, corpus)   # what the trainer runs: model, batches, eval
model = objective.build_model()
print(f"{model.num_parameters() / 1e6:.2f}M parameters")
collate = make_collator(cfg, tok)      # salient masking, as the trainer does on tinyworld
batch = collate(corpus.train_ids[:cfg.batch_size], corpus.train_mask[:cfg.batch_size])
M = int((batch["labels"] != -100).sum())

sparse = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
model.sparse_prediction = False
dense = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
model.sparse_prediction = True
B, S = batch["input_ids"].shape
print(f"sparse logits {sparse.logits.shape}, dense logits {dense.logits.shape}")
print(f"loss sparse {sparse.loss.item():.6f} = dense {dense.loss.item():.6f}; "
      f"head cost saved: {B * S / M:.1f}x")
assert sparse.logits.shape == (M, len(tok))
assert abs(sparse.loss.item() - dense.loss.item()) < 1e-5
# at initialisation the model knows nothing: its loss is about log V
assert abs(sparse.loss.item() - np.log(len(tok))) < 0.5
"""),
    md(r"""
## 3. Masking for facts: salient masking

With BERT's rule every token is masked with the same probability, 15%. Most tokens of a
sentence are words like *the*, *is*, *of*; a fact lives in its **entities**: in "Paris is the
capital of France." the model must learn to fill *France* from *Paris* (and back). With
random masks, the entity is masked in only 15% of the sentences that state the fact, and
in some of those its partner is masked too.

**Salient masking** (REALM, Guu et al. 2020) masks one entity in *every* sentence that names
one, chosen at random, on top of the usual 15% of the other tokens. tinyworld knows its
entities (every country, capital, animal, colour, ... is one token), so the trainer uses it
there (`--masking auto`); on other text it falls back to BERT's rule. In our runs it was the
difference between facts learned in a few minutes and not learned at all in that time
(`benchmarks/results/train_default.md`).
"""),
    code(r"""
sentence = tok(["Paris is the capital of France. The sky is blue."])
# the salient choice alone (other tokens at probability ~0): one entity in each sentence,
# then the usual 80/10/10 (so now and then the chosen word is swapped or kept, not masked)
entities_only = make_collator(TrainConfig(mlm_probability=1e-9), tok)
salient = make_collator(cfg, tok)                      # as in training: + 15% of the rest
token = MLMCollator(tok, mlm_probability=0.15, seed=0)  # BERT's rule

def masked(collate):
    return tok.decode(collate(sentence["input_ids"])["input_ids"][0].tolist())

for _ in range(3):
    print("one entity per sentence:", masked(entities_only))
print("salient, as trained:    ", masked(salient))
print("token (BERT):           ", masked(token))

# over many draws: how often is a fact's entity asked for?
many = np.repeat(sentence["input_ids"], 2000, axis=0)
ids = sentence["input_ids"][0]
entity_positions = [i for i, t in enumerate(ids) if tok.convert_ids_to_tokens(int(t)) in
                    ("paris", "france", "blue")]
for name, collate_fn in [("salient", salient), ("token", token)]:
    asked = collate_fn(many)["labels"][:, entity_positions] != -100
    print(f"{name:8s} one of Paris/France asked for: {asked[:, :2].any(axis=1).mean():.0%}, "
          f"'blue': {asked[:, 2].mean():.0%}")
    if name == "salient":
        assert asked[:, :2].any(axis=1).all() and asked[:, 2].all()
"""),
    md(r"""
## 4. The optimizer and the schedule

**AdamW** keeps running averages of each parameter's gradient $m$ and squared gradient $v$ and
steps by $m/\sqrt v$ (bias-corrected), so every parameter moves at a similar pace whatever the
scale of its gradient; weight decay is applied directly to the weights (decoupled), and not to
biases or layer-norm parameters.

The learning rate **warms up** linearly: at the start $v$ is estimated from very few gradients
and the model's gradients are large and noisy, so full-size steps would throw it off. It then
**decays** to zero (here along a cosine). Before each step, **clipping** rescales the gradients if their
global norm exceeds 1, a guard against a rare huge gradient.
"""),
    code(r"""
optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
schedule = [lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.decay)
            for step in range(1, cfg.steps + 1)]
plt.figure(figsize=(6, 2.5)); plt.plot(range(1, cfg.steps + 1), schedule)
plt.xlabel("step"); plt.ylabel("learning rate"); plt.title("warmup, then cosine decay"); plt.show()
assert max(schedule) == cfg.lr and schedule[-1] == 0.0
"""),
    md(r"""
## 5. The loop

One optimizer step: draw a batch, mask it afresh, forward, backward, clip, set the learning
rate, step, clear the gradients (the trainer, `tinymlm.trainer`, does the same). Every 100
steps we measure the held-out loss and accuracy on fixed masks (`objective.evaluate`) and ask
the model to fill in a few sentences. The figure updates as it goes.
"""),
    code(r"""
probe_sentences = ["Paris is the capital of [MASK].", "The cat sat on the [MASK].",
                   "What is the capital of Japan? It is [MASK]."]     # the last: never read
history, predictions = [], {}
rng = np.random.default_rng(cfg.seed)

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 3.5))
handle = display(fig, display_id=True)

def redraw():
    for ax in (ax_loss, ax_acc):
        ax.clear()
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], lw=0.8, label="training loss")
    evals = [h for h in history if "eval_loss" in h]
    ax_loss.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="held-out loss")
    ax_loss.axhline(unigram_loss, color="grey", ls="--", label="unigram baseline")
    ax_loss.set_xlabel("step"); ax_loss.set_ylabel("nats"); ax_loss.legend()
    ax_acc.plot([h["step"] for h in evals], [h["eval_accuracy"] for h in evals], "s-", color="tab:green")
    ax_acc.axhline(unigram_accuracy, color="grey", ls="--")
    ax_acc.set_xlabel("step"); ax_acc.set_ylabel("held-out masked-token accuracy")
    handle.update(fig)

backend.manual_seed(cfg.seed)
model.train()
start = time.perf_counter()
for step in range(1, cfg.steps + 1):
    rows = rng.integers(len(corpus.train_ids), size=cfg.batch_size)
    batch = collate(corpus.train_ids[rows], corpus.train_mask[rows])
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    grad_norm = clip_grad_norm_(model.parameters(), cfg.clip_norm)
    optimizer.set_lr(lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.decay))
    optimizer.step()
    optimizer.zero_grad()
    history.append({"step": step, "loss": out.loss.item(), "grad_norm": float(grad_norm)})
    if step % 100 == 0 or step == 1:
        history[-1].update(objective.evaluate(model))
        predictions[step] = [r[0]["token_str"] for r in fill_mask(model, tok, probe_sentences, top_k=1)]
        redraw()
plt.close(fig)
print(f"{cfg.steps} steps in {time.perf_counter() - start:.0f} s")
"""),
    code(r"""
final = history[-1]
print(f"held-out loss {final['eval_loss']:.3f} (unigram {unigram_loss:.3f}), "
      f"accuracy {final['eval_accuracy']:.1%} (unigram {unigram_accuracy:.1%})")
print(f"\n{'step':>5}  " + "  ".join(f"{s[:30]:32s}" for s in probe_sentences))
for step, best in predictions.items():
    print(f"{step:5d}  " + "  ".join(f"{b:32s}" for b in best))

first_losses = np.mean([h["loss"] for h in history[:20]])
last_losses = np.mean([h["loss"] for h in history[-20:]])
assert last_losses < first_losses - 1.0          # it learned something...
assert final["eval_loss"] < unigram_loss         # ...from the context, not just word counts
assert final["eval_accuracy"] > unigram_accuracy
# ...and facts: the trained model's top answers are right
assert predictions[cfg.steps][0] == "france", predictions[cfg.steps]
assert predictions[cfg.steps][1] == "mat", predictions[cfg.steps]
assert predictions[cfg.steps][2] == "tokyo", predictions[cfg.steps]   # a phrasing never read
"""),
    md(r"""
## 6. What the model knows

The loss falls first: the model learns where the frequent words go (`the`, `.`, `is`) and
leaves the unigram line behind. Facts come later, and suddenly: for a few hundred steps
"Paris is the capital of [MASK]." gets *a* country (look at the table above), then the
attention learns to look from `[MASK]` to the word that decides the answer, and the right one
appears, together with answers to questions phrased in ways the model never read (the third
column). Salient masking shortens that wait a great deal, but it is still there: with plain
token masking, the runs in `benchmarks/results/train_default.md` knew only a fraction of the
facts after 1,600 steps.

`objective.evaluate` measures loss and accuracy on held-out text with fixed masks, and
`tinymlm.objectives.pretraining.knowledge_report` asks fact questions in phrasings the model never read, so
memorised sentences do not count. The command line runs this same loop for as long as you
like, with checkpoints you can resume:

```bash
python -m tinymlm.train            # 2,000 steps, about 4 minutes on two cores
python -m tinymlm.fill_mask --model runs/<the run folder> "Paris is the capital of [MASK]."
```

## Summary

* The unigram baseline is the loss of ignoring the context; learning means getting below it.
* Sparse prediction runs the output layer only on the ~15% labelled positions: same loss, a
  fraction of the cost.
* Salient masking asks for an entity in every sentence, so facts are learned far sooner.
* The loop is: mask → forward → backward → clip → schedule → AdamW step → zero grad.

Next: **Lesson 6** runs the same code on a GPU and looks inside the fused kernels.
"""),
]
