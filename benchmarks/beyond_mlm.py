"""MLM vs ELECTRA vs no pretraining, at equal pretraining compute, on the three tinyworld tasks.

    PYTHONPATH=. python benchmarks/beyond_mlm.py                       # the real run
    PYTHONPATH=. python benchmarks/beyond_mlm.py --quick --work /tmp/b  # a smoke run (~1 min)

For every seed it pretrains a tiny encoder twice on tinyworld, once with masked language
modeling and once with ELECTRA, for the same number of training FLOPs: MLM runs
``--pretrain-steps`` steps and ELECTRA runs as many steps as make the same total, by the
trainer's own accounting (the objectives' ``model_flops``):

    electra_steps = round(mlm_steps · mlm_flops_per_step / electra_flops_per_step)

Then it fine-tunes each of the two encoders and a randomly initialised one ("none") on
``verify``, ``entities`` and ``qa`` with identical settings, and collects the held-out scores.
Every run is the project's own command line (``python -m tinymlm.train`` /
``python -m tinymlm.finetune``) in a subprocess, so the commands written into the report are
exactly the ones that ran; every option is passed explicitly, so the results do not depend on
the defaults of the day.

Writes ``beyond_mlm.md`` (machine, date, commit, commands, pretraining FLOPs and wall time,
the table of mean ± std over seeds, what it shows), ``beyond_mlm.png`` (grouped bars with
error bars) and ``beyond_mlm.json`` (every number) into ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from the source tree
    sys.path.insert(0, str(REPO))

from tinymlm.fileio import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402

MODELS = ("mlm", "electra", "none")  # how each encoder was pretrained ("none": random init)
TASKS = ("verify", "entities", "qa")
# The score each task is judged by (the finetune result key) and its name in the table; the
# second entry of each task is shown beside it.
TASK_METRICS = {
    "verify": [("eval_accuracy", "accuracy")],
    "entities": [("eval_entity_f1", "entity F1"), ("eval_accuracy", "word accuracy")],
    "qa": [("eval_f1", "F1"), ("eval_exact_match", "exact match")],
}

# Pretraining: the trainer's tinyworld recipe (python -m tinymlm.train with no options), the
# same for both objectives. With salient masking, ELECTRA's generator fills in one entity per
# sentence, so its discriminator must tell right facts from wrong ones.
PRETRAIN = {
    "corpus": "tinyworld",
    "model-size": "tiny",
    "batch-size": 128,
    "max-length": 16,
    "lr": 3e-3,
    "warmup-steps": 60,
    "decay": "cosine",
    "weight-decay": 0.01,
    "clip-norm": 1.0,
    "grad-accum": 1,
    "dropout": 0.1,
    "mlm-probability": 0.15,
    "masking": "salient",
    "packing": "sentences",
    "log-every": 10,
    "kernels": "auto",
    "vocab-size": 8000,
    "tinyworld-docs": 6000,
}
ELECTRA = {"generator-size": 0.25, "electra-weight": 50.0}
FINETUNE = {
    "model-size": "tiny",  # the encoder of --model none: the same shape as the pretrained ones
    "batch-size": 32,
    "max-length": 64,
    "lr": 1e-3,
    "warmup-steps": 20,
    "weight-decay": 0.01,
    "clip-norm": 1.0,
    "log-every": 10,
}


# --- compute accounting ---------------------------------------------------------------------


def flops_per_step(objective: str, pretrain: dict = PRETRAIN, electra: dict = ELECTRA) -> float:
    """Training FLOPs of one optimizer step, by the objective's accounting, for the expected
    number of masked positions (mlm_probability of the batch's tokens)."""
    from tinymlm.data import tinyworld
    from tinymlm.objectives import PRETRAINING, TrainConfig
    from tinymlm.tokenizer import BertTokenizer

    extra = electra if objective == "electra" else {}
    cfg = TrainConfig(
        **{k.replace("-", "_"): v for k, v in {**pretrain, **extra}.items() if k != "corpus"},
        objective=objective,
    )
    tokenizer = BertTokenizer.from_vocab(tinyworld.vocabulary())
    trained = PRETRAINING[objective]
    model = trained.make_model(cfg, tokenizer)
    batch, seq = cfg.batch_size * cfg.grad_accum, cfg.max_length
    return trained.model_flops(model, batch, seq, round(cfg.mlm_probability * batch * seq))


def matched_steps(mlm_steps: int, mlm_flops: float, electra_flops: float) -> int:
    """ELECTRA's step count that spends what ``mlm_steps`` MLM steps spend (at least 1)."""
    if mlm_steps < 1 or mlm_flops <= 0 or electra_flops <= 0:
        raise ValueError("steps and FLOPs per step must be positive")
    return max(1, round(mlm_steps * mlm_flops / electra_flops))


def flops_from_metrics(rows: list[dict], tokens_per_step: int) -> float:
    """Total training FLOPs a run counted, rebuilt from its metrics.jsonl log rows.

    Each log row covers the steps since the previous one and reports tokens_per_s and
    gflops_per_s over that window, so its FLOPs are gflops_per_s · 1e9 · tokens / tokens_per_s
    with tokens = steps · tokens_per_step (the window's time cancels)."""
    total, previous = 0.0, 0
    for row in rows:
        if "gflops_per_s" not in row:
            continue
        steps = row["step"] - previous
        total += row["gflops_per_s"] * 1e9 * steps * tokens_per_step / row["tokens_per_s"]
        previous = row["step"]
    return total


def unigram_loss(pretrain: dict = PRETRAIN, seed: int = 0) -> float:
    """The masked-token loss of a model that ignores context: the entropy (nats) of the
    training corpus's ordinary tokens, the floor MLM sits on until it learns to read."""
    import numpy as np

    from tinymlm.objectives import TrainConfig, build_corpus

    cfg = TrainConfig(max_length=pretrain["max-length"], tinyworld_docs=pretrain["tinyworld-docs"],
                      packing=pretrain.get("packing", "sentences"), seed=seed)  # fmt: skip
    corpus = build_corpus(cfg, log=lambda msg: None)
    ids = corpus.train_ids[corpus.train_mask == 1]  # (tokens,)
    ids = ids[~np.isin(ids, corpus.tokenizer.all_special_ids)]
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# --- the commands ---------------------------------------------------------------------------


def _options(settings: dict) -> list[str]:
    return [part for k, v in settings.items() for part in (f"--{k}", str(v))]


def pretrain_command(objective: str, seed: int, steps: int, out: Path, pretrain=PRETRAIN) -> list:
    extra = ELECTRA if objective == "electra" else {}
    settings = {
        **pretrain,
        "objective": objective,
        **extra,
        "steps": steps,
        "eval-every": steps,
        "save-every": steps,
        "seed": seed,
    }
    return [sys.executable, "-m", "tinymlm.train", *_options(settings), "--out", str(out)]


def finetune_command(
    task: str, model: str, seed: int, steps: int, out: Path, finetune=FINETUNE
) -> list:
    settings = {**finetune, "steps": steps, "eval-every": steps, "seed": seed}
    return [
        sys.executable,
        "-m",
        "tinymlm.finetune",
        "--task",
        task,
        "--model",
        model,
        *_options(settings),
        "--out",
        str(out),
    ]


def shown(command: list) -> str:
    """The command as a person would type it from the repository root."""
    return shlex.join(["python", *command[1:]])


def run_commands(commands: list[list], logs: list[Path], jobs: int, env: dict) -> list[dict]:
    """Run the commands, ``jobs`` at a time; each one's stderr goes to its log file. Returns,
    per command, its wall time and stdout. A failing command stops the experiment."""

    def one(command, log):
        start = time.perf_counter()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as err:
            done = subprocess.run(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        if done.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise RuntimeError(f"{shown(command)} failed (exit {done.returncode}):\n{tail}")
        return {"wall_s": time.perf_counter() - start, "stdout": done.stdout}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, commands, logs))


# --- aggregation and the table -------------------------------------------------------------


def aggregate(scores: list[dict]) -> dict:
    """{task: {metric: {model: {"mean", "std", "n", "values"}}}} from rows of
    ``{"seed", "task", "model", <metric>: value, ...}``; std is the sample std (0 for one)."""
    table: dict = {}
    for task, metrics in TASK_METRICS.items():
        for key, _ in metrics:
            for model in MODELS:
                values = [
                    r[key] for r in scores if r["task"] == task and r["model"] == model and key in r
                ]
                if not values:
                    continue
                table.setdefault(task, {}).setdefault(key, {})[model] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                    "values": values,
                }
    return table


def format_table(table: dict) -> str:
    """Markdown: one row per task metric, one column per model, mean ± std over seeds."""
    header = "| task | metric | " + " | ".join(MODELS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(MODELS)]
    for task, metrics in TASK_METRICS.items():
        for key, name in metrics:
            cells = table.get(task, {}).get(key, {})
            if not cells:
                continue
            best = max(cells[m]["mean"] for m in cells)
            row = []
            for model in MODELS:
                if model not in cells:
                    row.append("—")
                    continue
                text = f"{cells[model]['mean']:.3f} ± {cells[model]['std']:.3f}"
                row.append(f"**{text}**" if cells[model]["mean"] == best else text)
            lines.append(f"| {task} | {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def findings(table: dict) -> list[str]:
    """One sentence per task on the main metric: each pretrained encoder against none, and
    whether the gap is larger than the seeds' spread (|Δ| > std_a + std_b)."""
    sentences = []
    for task, metrics in TASK_METRICS.items():
        key, name = metrics[0]
        cells = table.get(task, {}).get(key, {})
        if "none" not in cells:
            continue
        base = cells["none"]
        parts = []
        for model in ("mlm", "electra"):
            if model not in cells:
                continue
            delta = cells[model]["mean"] - base["mean"]
            noise = cells[model]["std"] + base["std"]
            verdict = (
                "within the seeds' spread"
                if abs(delta) <= noise
                else "better"
                if delta > 0
                else "worse"
            )
            parts.append(f"{model.upper()} {delta:+.3f} ({verdict})")
        if {"mlm", "electra"} <= cells.keys():
            delta = cells["electra"]["mean"] - cells["mlm"]["mean"]
            noise = cells["electra"]["std"] + cells["mlm"]["std"]
            verdict = (
                "within the seeds' spread"
                if abs(delta) <= noise
                else "ELECTRA ahead"
                if delta > 0
                else "MLM ahead"
            )
            parts.append(f"ELECTRA − MLM {delta:+.3f} ({verdict})")
        sentences.append(f"{task} ({name}, none = {base['mean']:.3f}): " + "; ".join(parts) + ".")
    return sentences


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [(task, *TASK_METRICS[task][0]) for task in TASKS if task in table]
    width = 0.8 / len(MODELS)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(groups))
    for i, model in enumerate(MODELS):
        cells = [table[task][key].get(model) for task, key, _ in groups]
        means = [c["mean"] if c else np.nan for c in cells]
        stds = [c["std"] if c else 0.0 for c in cells]
        ax.bar(
            x + (i - (len(MODELS) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=4,
            label={"none": "not pretrained"}.get(model, f"{model.upper()} pretrained"),
        )
        for c, xi in zip(cells, x + (i - (len(MODELS) - 1) / 2) * width):
            if c:  # every seed as a dot, so two seeds are not mistaken for a distribution
                ax.plot([xi] * len(c["values"]), c["values"], "k.", ms=4)
    ax.set_xticks(x, [f"{task}\n({name})" for task, _, name in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out score")
    n = max((c["n"] for t, k, _ in groups for c in table[t][k].values()), default=0)
    ax.set_title(f"Fine-tuned tiny encoders at equal pretraining FLOPs (mean ± std, {n} seeds)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --- the report -----------------------------------------------------------------------------


def machine() -> dict:
    import numpy

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "load_average_start": os.getloadavg()[0],
    }


def write_report(result: dict, results_dir: Path) -> None:
    m, table = result["machine"], aggregate(result["scores"])
    pre = result["pretraining"]
    lines = [
        "# Beyond MLM: MLM vs ELECTRA vs no pretraining, at equal pretraining compute",
        "",
        f"- date: {m['date']}; machine: {m['processor']}, {m['cpu_count']} cores "
        f"({m['platform']}); Python {m['python']}, NumPy {m['numpy']}",
        f"- commit: {m['commit']}",
        f"- command: `{result['command']}` ({result['jobs']} runs at a time, "
        f"OPENBLAS_NUM_THREADS={result['blas_threads']}); total wall time "
        f"{result['total_wall_s'] / 60:.1f} min",
        f"- load average (1 min) at start / end: {m['load_average_start']:.2f} / "
        f"{m['load_average_end']:.2f} (the machine was shared: wall times are noisy)",
        f"- seeds: {', '.join(map(str, result['seeds']))}. A seed sets the pretraining corpus "
        "sample and masks, the task split (which entities are held out), the head's "
        "initialisation (and the whole encoder's for none) and the fine-tuning batch order.",
        "",
        "## Pretraining (tiny encoder: 2 layers, width 128; tinyworld)",
        "",
        f"Recipe, identical for both objectives: {_recipe(result['pretrain_settings'])}. "
        f"ELECTRA: {_recipe(result['electra_settings'])}; its generator masks like MLM does.",
        f"FLOPs per step by the objectives' `model_flops` (expected masked positions): MLM "
        f"{result['flops_per_step']['mlm']:.3e}, ELECTRA {result['flops_per_step']['electra']:.3e}"
        f" → {result['steps']['mlm']} MLM steps vs {result['steps']['electra']} ELECTRA steps."
        f" A model that ignores context (predicts unigram frequencies) has a masked-token loss "
        f"of {result['unigram_loss']:.3f} nats on this corpus. Wall times are of runs sharing "
        f"the machine {result['jobs']} at a time (and with other people's jobs).",
        "",
        "| seed | objective | steps | counted FLOPs | vs MLM | wall time (s) | held-out MLM loss "
        "| held-out masked acc. | RTD acc. (all-original) | RTD AUC | fact acc. |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pre:
        mlm = next(q for q in pre if q["seed"] == p["seed"] and q["objective"] == "mlm")
        ratio = p["flops"] / mlm["flops"] if mlm["flops"] else float("nan")
        rtd, auc = p.get("eval_rtd_accuracy"), p.get("eval_rtd_auc")
        share = p.get("eval_rtd_original_share")
        fact = p.get("fact_accuracy")
        rtd_cell = "—" if rtd is None else f"{rtd:.3f}"
        if share is not None:
            rtd_cell += f" ({share:.3f})"
        lines.append(
            f"| {p['seed']} | {p['objective']} | {p['steps']} | {p['flops']:.3e} | {ratio:.3f} "
            f"| {p['wall_s']:.0f} | {p['eval_loss']:.3f} | {p['eval_accuracy']:.3f} | "
            f"{rtd_cell} | {'—' if auc is None else f'{auc:.3f}'} | "
            f"{'—' if fact is None else f'{fact:.3f}'} |"
        )
    lines += [
        "",
        "Held-out MLM loss/accuracy is the generator's for ELECTRA (a network of a quarter "
        "the width), so it is not comparable with MLM's; RTD acc. = the discriminator's "
        "replaced-token-detection accuracy, beside what answering 'original' everywhere "
        "scores; RTD AUC = the chance that a replaced token scores above an original one "
        "(0.5: no skill, 1: perfect); fact acc. = tinyworld's held-out fact probes "
        "(fill-mask, MLM only).",
        "",
        f"## Fine-tuning ({result['finetune_steps']} steps, identical for every encoder)",
        "",
        f"Settings: {_recipe(result['finetune_settings'])}, eval on the task's held-out split "
        "at the end.",
        "",
        format_table(table),
        "",
        "Mean ± sample standard deviation over seeds; the best mean of each row in bold. "
        "Per-seed values are in `beyond_mlm.json` and drawn as dots in `beyond_mlm.png`.",
        "",
        "## What it shows",
        "",
        *[f"- {s}" for s in findings(table)],
        "",
        result.get("notes", "").strip(),
        "",
        "## Commands",
        "",
        "Every run below is one subprocess started by the script, from the repository root "
        "with `PYTHONPATH=.`:",
        "",
        "```",
        *[shown(c) for c in result["commands"]],
        "```",
        "",
    ]
    atomic_write_text(results_dir / "beyond_mlm.md", "\n".join(lines))


def _recipe(settings: dict) -> str:
    return ", ".join(f"`--{k} {v}`" for k, v in settings.items())


# --- the experiment -------------------------------------------------------------------------


def experiment(
    seeds,
    pretrain_steps,
    finetune_steps,
    work: Path,
    results_dir: Path,
    jobs: int,
    pretrain=PRETRAIN,
    finetune=FINETUNE,
    command="",
    notes="",
    log=print,
) -> dict:
    start = time.perf_counter()
    info = machine()
    per_step = {o: flops_per_step(o, pretrain) for o in ("mlm", "electra")}
    unigram = unigram_loss(pretrain, seeds[0])
    steps = {
        "mlm": pretrain_steps,
        "electra": matched_steps(pretrain_steps, per_step["mlm"], per_step["electra"]),
    }
    log(f"FLOPs per step: {per_step}; steps: {steps}")
    blas_threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OPENBLAS_NUM_THREADS": str(blas_threads),
        "OMP_NUM_THREADS": str(blas_threads),
    }

    # longest runs first, so the pool is not left waiting on one at the end
    pre_jobs = [(seed, o) for o in ("electra", "mlm") for seed in seeds]
    pre_dirs = {(seed, o): work / f"pretrain-{o}-seed{seed}" for seed, o in pre_jobs}
    pre_cmds = [
        pretrain_command(o, seed, steps[o], pre_dirs[seed, o], pretrain) for seed, o in pre_jobs
    ]
    log(f"pretraining {len(pre_cmds)} encoders, {jobs} at a time")
    pre_runs = run_commands(pre_cmds, [Path(f"{pre_dirs[k]}.log") for k in pre_jobs], jobs, env)
    tokens_per_step = pretrain["batch-size"] * pretrain["grad-accum"] * pretrain["max-length"]
    pretraining = []
    for (seed, o), run in zip(pre_jobs, pre_runs):
        rows = [
            json.loads(x)
            for x in (pre_dirs[seed, o] / "metrics.jsonl").read_text().splitlines()
            if x
        ]
        evals = [r for r in rows if "eval_loss" in r][-1]
        final = [r for r in rows if "fact_accuracy" in r]
        pretraining.append(
            {
                "seed": seed,
                "objective": o,
                "steps": steps[o],
                "wall_s": run["wall_s"],
                "flops": flops_from_metrics(rows, tokens_per_step),
                "planned_flops": steps[o] * per_step[o],
                **{k: v for k, v in evals.items() if k.startswith("eval_")},
                **({"fact_accuracy": final[-1]["fact_accuracy"]} if final else {}),
            }
        )
        log(f"pretrained {o} seed {seed} in {run['wall_s']:.0f} s: {pretraining[-1]}")

    ft_jobs = [(seed, t, m) for t in ("qa", "verify", "entities") for seed in seeds for m in MODELS]
    ft_dirs = {k: work / f"finetune-{k[1]}-{k[2]}-seed{k[0]}" for k in ft_jobs}
    ft_cmds = [
        finetune_command(
            task,
            "none" if model == "none" else str(pre_dirs[seed, model]),
            seed,
            finetune_steps,
            ft_dirs[seed, task, model],
            finetune,
        )
        for seed, task, model in ft_jobs
    ]
    log(f"fine-tuning {len(ft_cmds)} runs, {jobs} at a time")
    ft_runs = run_commands(ft_cmds, [Path(f"{ft_dirs[k]}.log") for k in ft_jobs], jobs, env)
    scores = []
    for (seed, task, model), run in zip(ft_jobs, ft_runs):
        metrics = json.loads(run["stdout"].strip().splitlines()[-1])
        scores.append(
            {
                "seed": seed,
                "task": task,
                "model": model,
                "wall_s": run["wall_s"],
                **{k: v for k, v in metrics.items() if k.startswith("eval_")},
            }
        )
        log(f"fine-tuned {model} on {task}, seed {seed}: {scores[-1]}")

    info["load_average_end"] = os.getloadavg()[0]
    result = {
        "command": command,
        "machine": info,
        "seeds": list(seeds),
        "jobs": jobs,
        "blas_threads": blas_threads,
        "pretrain_settings": pretrain,
        "electra_settings": ELECTRA,
        "finetune_settings": finetune,
        "finetune_steps": finetune_steps,
        "flops_per_step": per_step,
        "unigram_loss": unigram,
        "steps": steps,
        "pretraining": pretraining,
        "scores": scores,
        "table": aggregate(scores),
        "notes": notes,
        "commands": [*pre_cmds, *ft_cmds],
        "total_wall_s": time.perf_counter() - start,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "beyond_mlm.json", result)
    plot(result["table"], results_dir / "beyond_mlm.png")
    write_report(result, results_dir)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=600,
        help="MLM's steps (ELECTRA: as many as spend the same FLOPs)",
    )
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one seed, 2 + 2 pretraining steps on a small corpus, "
        "2 fine-tuning steps",
    )
    p.add_argument(
        "--work", default=None, help="where the run folders go (default runs/beyond_mlm-<time>)"
    )
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--notes", default=None, help="a Markdown file appended under 'What it shows'")
    p.add_argument(
        "--rewrite-report",
        action="store_true",
        help="rewrite the .md and .png from the .json in --results (with --notes); runs nothing",
    )
    args = p.parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes else ""
    if args.rewrite_report:
        results_dir = Path(args.results)
        result = json.loads((results_dir / "beyond_mlm.json").read_text())
        result["notes"] = notes or result.get("notes", "")
        if "unigram_loss" not in result:
            result["unigram_loss"] = unigram_loss(result["pretrain_settings"], result["seeds"][0])
        atomic_write_json(results_dir / "beyond_mlm.json", result)
        plot(aggregate(result["scores"]), results_dir / "beyond_mlm.png")
        write_report(result, results_dir)
        return 0
    pretrain, finetune = dict(PRETRAIN), dict(FINETUNE)
    if args.quick:
        args.seeds, args.pretrain_steps, args.finetune_steps = args.seeds[:1], 2, 2
        pretrain.update({"tinyworld-docs": 300, "warmup-steps": 1})
        finetune.update({"warmup-steps": 1})
    if min(args.pretrain_steps, args.finetune_steps, args.jobs) < 1:
        p.error("--pretrain-steps, --finetune-steps and --jobs must be positive")
    work = Path(args.work or REPO / "runs" / f"beyond_mlm-{time.strftime('%Y%m%d-%H%M%S')}")
    if work.exists() and any(work.iterdir()):
        p.error(f"{work} already exists and is not empty: choose another --work")
    command = shlex.join(["python", "benchmarks/beyond_mlm.py", *(argv or sys.argv[1:])])
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = experiment(
        args.seeds,
        args.pretrain_steps,
        args.finetune_steps,
        work,
        Path(args.results),
        args.jobs,
        pretrain,
        finetune,
        command,
        notes,
        log,
    )
    log(format_table(result["table"]))
    log(f"done in {result['total_wall_s'] / 60:.1f} min; wrote {args.results}/beyond_mlm.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
