"""MLM against autoregression (CLM) on tinyworld, at equal training FLOPs (issue 19).

    PYTHONPATH=. python benchmarks/mlm_vs_clm.py                        # the real run
    PYTHONPATH=. python benchmarks/mlm_vs_clm.py --quick --work /tmp/m   # a smoke run (minutes)

For every seed it pretrains a tiny BERT twice on tinyworld with the project's own command line,
once with masked language modeling (``--objective mlm``: the trainer's tinyworld recipe) and
once left to right (``--objective clm``: ``BertLMHeadModel``), for the same training FLOPs by
the objectives' accounting (CLM puts the output layer on every position, MLM on the ~15%
masked ones, so CLM gets fewer steps). Then it measures, on the two models:

- **gap filling**, split by where the answer's evidence lies: to the right of the gap
  ("[MASK] is the capital of France.") or to its left ("The capital of France is [MASK].").
  Both choose among the entities of the asked kind; the MLM by its logits at the [MASK], the
  causal model by scoring each candidate sentence whole (the sum of its next-token log-probs),
  the only way it can use words to the right. Training phrasings (memory) and held-out ones;
- **next-word prediction**: the causal model's true perplexity on held-out sequences beside
  the MLM's pseudo-perplexity (Salazar et al. 2020: each token scored with every other token
  visible, one forward pass per token) on the same tokens. They are not the same quantity: the
  MLM sees both sides, which is the point of the comparison;
- **generation**: prompts that ask a fact ("The capital of France is"); the share whose first
  generated word is the true answer, and the share of distinct continuations, for the causal
  model (greedy and sampled) and the MLM (mask-predict and Gibbs, given the answer's length);
- **fine-tuning**: ``verify``, ``entities`` and ``qa`` from each encoder and from none (the
  causal model's encoder keeps its causal attention, as Hugging Face's would).

Writes ``mlm_vs_clm.md`` (machine, date, commit, commands, tables of mean ± std over seeds,
what the numbers support), ``mlm_vs_clm.png`` and ``mlm_vs_clm.json`` into ``--results``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "benchmarks"):  # run as a script from the source tree
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import beyond_mlm as shared  # noqa: E402  (commands, machine info, FLOPs from metrics)

from tinymlm.fileio import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402

OBJECTIVES = ("mlm", "clm")
FINETUNED = ("mlm", "clm", "none")
TASK_METRICS = shared.TASK_METRICS
# The trainer's tinyworld recipe; the masking settings are MLM's alone.
PRETRAIN = {k: v for k, v in shared.PRETRAIN.items() if k not in ("masking", "mlm-probability")}
MLM_ONLY = {"masking": shared.PRETRAIN["masking"],
            "mlm-probability": shared.PRETRAIN["mlm-probability"]}
FINETUNE = shared.FINETUNE


# --- compute accounting ---------------------------------------------------------------------


def flops_per_step(objective: str, pretrain: dict = PRETRAIN) -> float:
    """Training FLOPs of one optimizer step: the encoder on every token, the output layer on
    the predicted positions (15% of the tokens for MLM, all but the last of each row for CLM)."""
    from tinymlm.data import tinyworld
    from tinymlm.objectives import bert_config, train_flops

    config = bert_config(pretrain["model-size"], len(tinyworld.vocabulary()),
                         pretrain["max-length"], pretrain["dropout"])
    batch, seq = pretrain["batch-size"] * pretrain["grad-accum"], pretrain["max-length"]
    predicted = (round(MLM_ONLY["mlm-probability"] * batch * seq) if objective == "mlm"
                 else batch * (seq - 1))
    return train_flops(config, batch, seq, predicted)


def pretrain_command(objective: str, seed: int, steps: int, out: Path, pretrain=PRETRAIN):
    settings = {**pretrain, **(MLM_ONLY if objective == "mlm" else {}), "objective": objective,
                "steps": steps, "eval-every": steps, "save-every": steps, "seed": seed}
    return [sys.executable, "-m", "tinymlm.train", *shared._options(settings), "--out", str(out)]


# --- the measurements -----------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(B, S, V) float64 NumPy logits, without gradients."""
    from tinymlm import backend
    from tinymlm.autograd import no_grad

    with no_grad():
        out = model(ids, mask).logits.data
    return backend.to_numpy(out).astype(np.float64)


def evidence_side(probe) -> str:
    """'left' when the probe names its subject before the [MASK], 'right' when after (an
    animal may be named in the plural: "Wolves say [MASK].")."""
    from tinymlm.data import tinyworld

    text = probe.text.lower()
    forms = [probe.subject] + [row[1] for row in tinyworld.ANIMALS if row[0] == probe.subject]
    named = min(text.find(f) for f in forms if f in text)
    return "left" if named < text.index("[mask]") else "right"


def gap_filling(mlm, clm, tokenizer, probes) -> list[dict]:
    """One row per probe: {split, side, relation, mlm, clm} (1 right, 0 wrong)."""
    from tinymlm.data import tinyworld

    rows = []
    for split, probe in probes:
        kind = tinyworld.RELATIONS[probe.relation][0]
        candidates = tinyworld.entities()[kind]
        ids = np.array([tokenizer.vocab[c] for c in candidates])  # (C,)
        enc = tokenizer([probe.text])
        position = int(np.flatnonzero(enc["input_ids"][0] == tokenizer.mask_token_id)[0])
        mlm_scores = logits(mlm, enc["input_ids"])[0, position, ids]  # (C,)
        # the causal model: every candidate sentence scored whole, left to right
        filled = np.array([tokenizer.encode(probe.text.replace("[MASK]", c))
                           for c in candidates])  # (C, S): one token per candidate
        log_p = log_softmax(logits(clm, filled))[:, :-1]  # (C, S-1, V)
        clm_scores = np.take_along_axis(log_p, filled[:, 1:, None], -1)[..., 0].sum(-1)  # (C,)
        rows.append({"split": split, "side": evidence_side(probe), "relation": probe.relation,
                     "mlm": int(candidates[int(mlm_scores.argmax())] == probe.answer),
                     "clm": int(candidates[int(clm_scores.argmax())] == probe.answer)})
    return rows


def next_word(mlm, clm, tokenizer, ids: np.ndarray, mask: np.ndarray) -> dict:
    """Per-token perplexities on the same ordinary (non-special) tokens of held-out sequences:
    the causal model's exp(mean -log P(w_t | w_<t)) and the MLM's pseudo-perplexity
    exp(mean -log P(w_t | every other token)) (one masked copy of the sequence per token)."""
    special = np.isin(ids, tokenizer.all_special_ids) | (mask == 0)  # (N, S)
    clm_nll, mlm_nll = [], []
    for row, row_mask, skip in zip(ids, mask, special, strict=True):
        scored = np.flatnonzero(~skip)  # (T,) positions scored
        scored = scored[scored > 0]
        if len(scored) == 0:
            continue
        log_p = log_softmax(logits(clm, row[None], row_mask[None])[0])  # (S, V)
        clm_nll += (-log_p[scored - 1, row[scored]]).tolist()
        copies = np.repeat(row[None], len(scored), axis=0)  # (T, S)
        copies[np.arange(len(scored)), scored] = tokenizer.mask_token_id
        copy_mask = np.repeat(row_mask[None], len(scored), axis=0)
        log_q = log_softmax(logits(mlm, copies, copy_mask))  # (T, S, V)
        mlm_nll += (-log_q[np.arange(len(scored)), scored, row[scored]]).tolist()
    return {"tokens": len(clm_nll), "clm_perplexity": math.exp(statistics.fmean(clm_nll)),
            "mlm_pseudo_perplexity": math.exp(statistics.fmean(mlm_nll))}


def fact_prompts(limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, the word that makes it true) for every country, three relations."""
    from tinymlm.data import tinyworld

    prompts = []
    for country, capital, _, language in tinyworld.COUNTRIES:
        prompts += [(f"The capital of {country.capitalize()} is", capital),
                    (f"People in {country.capitalize()} speak", language),
                    (f"{capital.capitalize()} is the capital of", country)]
    return prompts[:limit] if limit else prompts


GENERATORS = {  # name: (which model, generate()'s settings)
    "clm greedy": ("clm", {"method": "greedy", "max_new_tokens": 4}),
    "clm sample": ("clm", {"method": "sample", "max_new_tokens": 4}),
    # the MLM must be told the length: the answer and the full stop
    "mlm mask-predict": ("mlm", {"method": "mask-predict", "max_new_tokens": 2}),
    "mlm gibbs": ("mlm", {"method": "gibbs", "max_new_tokens": 2, "iterations": 3}),
}


def generation(models: dict, tokenizer, prompts, seed: int) -> dict:
    """Per generator: the share of prompts whose first new word is the true answer, and the
    share of distinct continuations (1 = every prompt got its own)."""
    from tinymlm.generate import generate

    results = {}
    for name, (which, settings) in GENERATORS.items():
        texts = [r[0]["generated_text"] for r in generate(
            models[which], tokenizer, [p for p, _ in prompts], seed=seed, **settings)]
        continuations = [t[len(p):].strip() for t, (p, _) in zip(texts, prompts, strict=True)]
        first = [re.split(r"[\s.?!,]", c.lower())[0] for c in continuations]
        results[name] = {
            "true_first_word": statistics.fmean(f == a for f, (_, a) in zip(first, prompts,
                                                                              strict=True)),
            "distinct": len(set(continuations)) / len(continuations),
            "examples": texts[:3],
        }
    return results


def measure(mlm_dir: Path, clm_dir: Path, seed: int, probes_per_split: int,
            eval_sequences: int, prompts: int) -> dict:
    from tinymlm.data import tinyworld
    from tinymlm.nn.bert import BertForMaskedLM
    from tinymlm.nn.causal import BertLMHeadModel
    from tinymlm.objectives import TrainConfig, build_corpus
    from tinymlm.tokenizer import BertTokenizer

    mlm, clm = BertForMaskedLM.from_pretrained(mlm_dir), BertLMHeadModel.from_pretrained(clm_dir)
    tokenizer = BertTokenizer.from_pretrained(mlm_dir)
    rng = np.random.default_rng(seed)
    probes = []
    for split in ("train", "heldout"):
        every = tinyworld.fact_probes(split)
        for side in ("left", "right"):  # an equal sample of each side
            pool = [p for p in every if evidence_side(p) == side]
            chosen = rng.permutation(len(pool))[:probes_per_split]
            probes += [(split, pool[i]) for i in sorted(chosen)]
    settings = json.loads((mlm_dir / "train_config.json").read_text())
    corpus = build_corpus(TrainConfig(**settings), log=lambda message: None)
    return {
        "gap_filling": gap_filling(mlm, clm, tokenizer, probes),
        "next_word": next_word(mlm, clm, tokenizer, corpus.eval_ids[:eval_sequences],
                               corpus.eval_mask[:eval_sequences]),
        "generation": generation({"mlm": mlm, "clm": clm}, tokenizer, fact_prompts(prompts),
                                 seed),
    }


# --- aggregation ----------------------------------------------------------------------------


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def cell(stats: dict | None, digits: int = 3) -> str:
    return "—" if stats is None else f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def gap_table(measured: list[dict]) -> dict:
    """{(split, side): {model: mean_std of per-seed accuracies}}."""
    table = {}
    for split in ("train", "heldout"):
        for side in ("right", "left"):
            per_model = {}
            for model in OBJECTIVES:
                accuracies = []
                for m in measured:
                    rows = [r[model] for r in m["gap_filling"]
                            if r["split"] == split and r["side"] == side]
                    if rows:
                        accuracies.append(statistics.fmean(rows))
                if accuracies:
                    per_model[model] = mean_std(accuracies)
            if per_model:
                table[f"{split}/{side}"] = per_model
    return table


def finetune_table(scores: list[dict]) -> dict:
    table = {}
    for task, metrics in TASK_METRICS.items():
        for key, _ in metrics:
            for model in FINETUNED:
                values = [s[key] for s in scores
                          if s["task"] == task and s["model"] == model and key in s]
                if values:
                    table.setdefault(f"{task}/{key}", {})[model] = mean_std(values)
    return table


def verdict(a: dict, b: dict, better: str, worse: str) -> str:
    """Whether mean a beats mean b by more than the seeds' spread (std_a + std_b)."""
    delta = a["mean"] - b["mean"]
    if abs(delta) <= a["std"] + b["std"] or (a["n"] < 2 and abs(delta) < 0.02):
        return "within the seeds' spread"
    return better if delta > 0 else worse


def findings(result: dict) -> list[str]:
    gap = result["tables"]["gap_filling"]
    lines = []
    for key in ("train/right", "train/left", "heldout/right", "heldout/left"):
        if key in gap and set(OBJECTIVES) <= gap[key].keys():
            m, c = gap[key]["mlm"], gap[key]["clm"]
            lines.append(f"gap filling, {key.replace('/', ' phrasings, evidence to the ')}: "
                         f"MLM {m['mean']:.3f}, CLM {c['mean']:.3f} — "
                         f"{verdict(m, c, 'MLM ahead', 'CLM ahead')}.")
    nw = result["tables"]["next_word"]
    lines.append(f"next word: CLM perplexity {cell(nw['clm_perplexity'], 2)} against the MLM's "
                 f"pseudo-perplexity {cell(nw['mlm_pseudo_perplexity'], 2)} (the MLM sees both "
                 "sides of each token, so a lower number there is expected, not a win).")
    for name, stats in result["tables"]["generation"].items():
        lines.append(f"generation, {name}: first word true {cell(stats['true_first_word'])}, "
                     f"distinct continuations {cell(stats['distinct'])}.")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gap = result["tables"]["gap_filling"]
    keys = list(gap)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, model in enumerate(OBJECTIVES):
        means = [gap[k].get(model, {"mean": np.nan})["mean"] for k in keys]
        stds = [gap[k].get(model, {"std": 0.0})["std"] for k in keys]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=4, label=model.upper())
    ax.set_xticks(x, [k.replace("/", "\nevidence ") for k in keys])
    ax.set_ylim(0, 1)
    ax.set_ylabel("gap-filling accuracy")
    ax.set_title("Filling a gap: MLM vs causal LM at equal training FLOPs")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(result: dict, results_dir: Path) -> None:
    m, t = result["machine"], result["tables"]
    lines = [
        "# MLM against autoregression (CLM) at equal training FLOPs",
        "",
        f"- date: {m['date']}; machine: {m['processor']}, {m['cpu_count']} cores "
        f"({m['platform']}); Python {m['python']}, NumPy {m['numpy']}",
        f"- commit: {m['commit']}",
        f"- command: `{result['command']}`; total wall time {result['total_wall_s'] / 60:.1f} min",
        f"- seeds: {', '.join(map(str, result['seeds']))}",
        f"- pretraining: {result['steps']['mlm']} MLM steps vs {result['steps']['clm']} CLM "
        f"steps (FLOPs per step {result['flops_per_step']['mlm']:.3e} vs "
        f"{result['flops_per_step']['clm']:.3e}); recipe "
        + ", ".join(f"`--{k} {v}`" for k, v in result["pretrain_settings"].items()),
        "",
        "## Gap filling (accuracy among the entities of the asked kind)",
        "",
        "| phrasings / evidence | MLM | CLM (scores whole sentences) |",
        "|---|---:|---:|",
        *[f"| {k} | {cell(v.get('mlm'))} | {cell(v.get('clm'))} |"
          for k, v in t["gap_filling"].items()],
        "",
        "## Next-word prediction (held-out sequences, the same tokens)",
        "",
        "| CLM perplexity | MLM pseudo-perplexity (Salazar et al. 2020) |",
        "|---:|---:|",
        f"| {cell(t['next_word']['clm_perplexity'], 2)} | "
        f"{cell(t['next_word']['mlm_pseudo_perplexity'], 2)} |",
        "",
        "## Generation (fact prompts; the MLM is given the answer's length)",
        "",
        "| generator | first word true | distinct continuations |",
        "|---|---:|---:|",
        *[f"| {name} | {cell(s['true_first_word'])} | {cell(s['distinct'])} |"
          for name, s in t["generation"].items()],
        "",
        f"## Fine-tuning ({result['finetune_steps']} steps, identical for every encoder)",
        "",
        "| task / metric | " + " | ".join(FINETUNED) + " |",
        "|---|" + "---:|" * len(FINETUNED),
        *[f"| {k} | " + " | ".join(cell(v.get(model)) for model in FINETUNED) + " |"
          for k, v in t["finetune"].items()],
        "",
        "## What the numbers support",
        "",
        *[f"- {line}" for line in findings(result)],
        "",
        result.get("notes", "").strip(),
        "",
        "## Commands",
        "",
        "```",
        *[shared.shown(c) for c in result["commands"]],
        "```",
        "",
    ]
    atomic_write_text(results_dir / "mlm_vs_clm.md", "\n".join(lines))


# --- the experiment -------------------------------------------------------------------------


def experiment(seeds, mlm_steps, finetune_steps, work: Path, results_dir: Path, jobs: int,
               sizes: dict, pretrain=PRETRAIN, finetune=FINETUNE, command="", log=print) -> dict:
    start = time.perf_counter()
    info = shared.machine()
    per_step = {o: flops_per_step(o, pretrain) for o in OBJECTIVES}
    steps = {"mlm": mlm_steps,
             "clm": shared.matched_steps(mlm_steps, per_step["mlm"], per_step["clm"])}
    log(f"FLOPs per step: {per_step}; steps: {steps}")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}

    pre_jobs = [(seed, o) for o in OBJECTIVES for seed in seeds]
    pre_dirs = {k: work / f"pretrain-{k[1]}-seed{k[0]}" for k in pre_jobs}
    pre_cmds = [pretrain_command(o, seed, steps[o], pre_dirs[seed, o], pretrain)
                for seed, o in pre_jobs]
    log(f"pretraining {len(pre_cmds)} models, {jobs} at a time")
    pre_runs = shared.run_commands(pre_cmds, [Path(f"{pre_dirs[k]}.log") for k in pre_jobs],
                                   jobs, env)
    tokens_per_step = pretrain["batch-size"] * pretrain["grad-accum"] * pretrain["max-length"]
    pretraining = []
    for (seed, o), run in zip(pre_jobs, pre_runs, strict=True):
        rows = [json.loads(x) for x in (pre_dirs[seed, o] / "metrics.jsonl").read_text()
                .splitlines() if x]
        evals = [r for r in rows if "eval_loss" in r][-1]
        pretraining.append({"seed": seed, "objective": o, "steps": steps[o],
                            "wall_s": run["wall_s"],
                            "flops": shared.flops_from_metrics(rows, tokens_per_step),
                            **{k: v for k, v in evals.items() if k.startswith("eval_")}})

    measured = []
    for seed in seeds:
        log(f"measuring seed {seed}")
        measured.append({"seed": seed, **measure(pre_dirs[seed, "mlm"], pre_dirs[seed, "clm"],
                                                 seed, **sizes)})

    ft_jobs = [(seed, task, m) for task in ("qa", "verify", "entities") for seed in seeds
               for m in FINETUNED]
    ft_dirs = {k: work / f"finetune-{k[1]}-{k[2]}-seed{k[0]}" for k in ft_jobs}
    ft_cmds = [shared.finetune_command(task, "none" if m == "none" else str(pre_dirs[seed, m]),
                                       seed, finetune_steps, ft_dirs[seed, task, m], finetune)
               for seed, task, m in ft_jobs]
    log(f"fine-tuning {len(ft_cmds)} runs, {jobs} at a time")
    ft_runs = shared.run_commands(ft_cmds, [Path(f"{ft_dirs[k]}.log") for k in ft_jobs], jobs,
                                  env)
    scores = [{"seed": seed, "task": task, "model": m,
               **{k: v for k, v in json.loads(run["stdout"].strip().splitlines()[-1]).items()
                  if k.startswith("eval_")}}
              for (seed, task, m), run in zip(ft_jobs, ft_runs, strict=True)]

    info["load_average_end"] = os.getloadavg()[0]
    generators = list(GENERATORS)
    result = {
        "command": command, "machine": info, "seeds": list(seeds), "jobs": jobs,
        "pretrain_settings": pretrain, "finetune_settings": finetune,
        "finetune_steps": finetune_steps, "flops_per_step": per_step, "steps": steps,
        "sizes": sizes, "pretraining": pretraining, "measured": measured, "scores": scores,
        "tables": {
            "gap_filling": gap_table(measured),
            "next_word": {k: mean_std([m["next_word"][k] for m in measured])
                          for k in ("clm_perplexity", "mlm_pseudo_perplexity")},
            "generation": {g: {k: mean_std([m["generation"][g][k] for m in measured])
                               for k in ("true_first_word", "distinct")} for g in generators},
            "finetune": finetune_table(scores),
        },
        "commands": [*pre_cmds, *ft_cmds],
        "total_wall_s": time.perf_counter() - start,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "mlm_vs_clm.json", result)
    plot(result, results_dir / "mlm_vs_clm.png")
    write_report(result, results_dir)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--mlm-steps", type=int, default=600,
                   help="MLM's steps (CLM: as many as spend the same FLOPs)")
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--probes", type=int, default=200,
                   help="gap-filling probes per split and evidence side")
    p.add_argument("--eval-sequences", type=int, default=200,
                   help="held-out sequences for next-word prediction")
    p.add_argument("--prompts", type=int, default=0, help="fact prompts (0: all)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: one seed, 2 MLM steps on a small corpus, 2 fine-tuning "
                        "steps, a handful of probes")
    p.add_argument("--work", default=None,
                   help="where the run folders go (default runs/mlm_vs_clm-<time>)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    pretrain, finetune = dict(PRETRAIN), dict(FINETUNE)
    sizes = {"probes_per_split": args.probes, "eval_sequences": args.eval_sequences,
             "prompts": args.prompts or None}
    if args.quick:
        args.seeds, args.mlm_steps, args.finetune_steps = args.seeds[:1], 2, 2
        pretrain.update({"tinyworld-docs": 300, "warmup-steps": 1})
        finetune.update({"warmup-steps": 1})
        sizes = {"probes_per_split": 3, "eval_sequences": 3, "prompts": 4}
    if min(args.mlm_steps, args.finetune_steps, args.jobs, args.probes,
           args.eval_sequences) < 1:
        p.error("--mlm-steps, --finetune-steps, --jobs, --probes and --eval-sequences must be "
                "positive")
    work = Path(args.work or REPO / "runs" / f"mlm_vs_clm-{time.strftime('%Y%m%d-%H%M%S')}")
    if work.exists() and any(work.iterdir()):
        p.error(f"{work} already exists and is not empty: choose another --work")
    command = shlex.join(["python", "benchmarks/mlm_vs_clm.py", *(argv or sys.argv[1:])])
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    result = experiment(args.seeds, args.mlm_steps, args.finetune_steps, work,
                        Path(args.results), args.jobs, sizes, pretrain, finetune, command, log)
    for line in findings(result):
        log(line)
    log(f"done in {result['total_wall_s'] / 60:.1f} min; wrote {args.results}/mlm_vs_clm.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
