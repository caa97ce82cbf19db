"""The training loop every objective shares: ``Trainer(objective, settings, run_dir).fit()``.

The objective (``tinymlm.objectives``) says what a batch is, which model to train, the loss
and the evaluation. The trainer owns everything else: gradient accumulation, clipping, the
learning-rate schedule, AdamW, the device, logging (``metrics.jsonl`` and the loss curve),
progress on stderr, checkpoints, resuming, saving on Ctrl-C, and stopping when the loss is no
longer a number.

**Reproducible.** Dropout is reseeded from the seed and the step before every step, batches
are a function of the step, and what else is random (a masking RNG) is saved in the
checkpoint by the objective. So a run stopped after step K (``stop_after``, or Ctrl-C) and
resumed ends with the same bytes as one that never stopped.

**Checkpoints** are written whole into ``checkpoints/step-N/`` and published at once
(``tinymlm.runs.publish_checkpoint``): the model and tokenizer (the objective's), the
optimizer state (``optimizer.safetensors``) and ``trainer_state.json`` (the step, the
optimizer's step and hyper-parameters, the objective's state).

**Data-parallel** (``world``, from ``tinymlm.distributed``): each of K processes trains on its
slice of every global batch (``data_parallel_step``) and the gradients are summed over them;
only rank 0 logs, shows progress and writes the run folder.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend, kernels
from tinymlm.distributed import World
from tinymlm.errors import UsageError
from tinymlm.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from tinymlm.optim import AdamW, clip_grad_norm_, lr_at, param_groups
from tinymlm.runs import plot_curves, publish_checkpoint


@dataclass(frozen=True)
class LoopSettings:
    """How the trainer steps: schedule, optimizer, and when to log, evaluate and save."""

    steps: int  # optimizer steps in all; the schedule is laid out over them
    lr: float
    warmup_steps: int
    decay: str = "linear"  # after warmup: linear, cosine or constant
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 100
    seed: int = 0
    kernels: str = "auto"


class Trainer:
    """Runs ``objective`` as ``settings`` say, on ``device``, writing into ``run_dir``.

    ``command`` is how the user continues a stopped run (``<command> --resume DIR``).
    ``log`` gets progress and messages, ``results`` what the run found (``objective.finish``:
    answers, final accuracies); the command lines send ``log`` to stderr, ``results`` to stdout.
    ``world`` is this process's share of a data-parallel run (one process if None).
    """

    def __init__(self, objective, settings: LoopSettings, run_dir: Path | None = None,
                 device: str = "cpu", log=print, command: str = "python -m tinymlm.train",
                 world: World | None = None, results=None):
        self.objective, self.settings = objective, settings
        self.run_dir = None if run_dir is None else Path(run_dir)  # fit() writes there
        self.world = world or World()
        self.device, self.command = device, command
        self.log = log if self.world.is_main else (lambda message: None)
        self.results = results or log
        self.rows: list[dict] = []  # metrics.jsonl
        # The losses read since the last log row: their sum and count. They are saved with a
        # checkpoint, so a resumed run logs the very means an uninterrupted one does.
        self.window_loss, self.window_losses = 0.0, 0

    def make_optimizer(self, model) -> AdamW:
        """AdamW over the model, no weight decay on biases and LayerNorm (``param_groups``)."""
        s = self.settings
        return AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=s.betas, eps=s.eps)

    def training_step(self, step: int, model, optimizer):
        """Optimizer step ``step`` (1-based): ``grad_accum`` micro-batches, clipping, schedule.

        Returns the summed micro-batch losses (a 0-d array on the model's device: reading it
        on the GPU is a sync), the gradient norm, the FLOPs and the tokens of the step.
        """
        s = self.settings
        if self.world.size > 1:
            return self.data_parallel_step(step, model, optimizer)
        backend.manual_seed(s.seed * 1_000_003 + step)  # dropout: a function of the step
        loss_sum, flops, tokens = None, 0.0, 0
        for micro in range(s.grad_accum):
            batch = self.objective.batch(step, micro)
            loss = self.objective.loss(model, batch)  # 0-d
            (loss * (1.0 / s.grad_accum)).backward()
            loss_sum = loss.data if loss_sum is None else loss_sum + loss.data
            flops += self.objective.flops(model, batch)
            tokens += batch["input_ids"].size
        grad_norm = clip_grad_norm_(model.parameters(), s.clip_norm)
        optimizer.set_lr(lr_at(step, s.lr, s.warmup_steps, s.steps, s.decay))
        optimizer.step()
        optimizer.zero_grad()
        return loss_sum, grad_norm, flops, tokens

    def data_parallel_step(self, step: int, model, optimizer):
        """``training_step`` as one of ``world.size`` processes; returns the same, for the
        whole global batch.

        Every rank builds the step's global micro-batches (the same masks and rows as one
        process) and keeps its slice of the rows. A loss term is a mean over the c_r items
        (predicted tokens) of this rank's slice; scaled by c_r / C, C the items of the global
        micro-batch, the terms' gradients summed over the ranks are the one-process gradient.
        The counts are read from the batches, so they are summed before any forward pass.
        """
        s, world, objective = self.settings, self.world, self.objective
        # Dropout: each rank its own masks (with one process this is training_step's seed).
        backend.manual_seed((s.seed * 1_000_003 + step) * world.size + world.rank)
        batches, flops, tokens = [], 0.0, 0
        for micro in range(s.grad_accum):
            batch = objective.batch(step, micro)  # global: every rank draws the same
            flops += objective.flops(model, batch)
            tokens += batch["input_ids"].size
            batches.append(world.shard(batch))
        mine = [objective.counts(batch) for batch in batches]  # (grad_accum, terms)
        if mine[0] is None:
            raise UsageError(f"{type(objective).__name__} cannot train over several processes "
                             "yet (its loss does not say how many tokens it averages); run "
                             "one process")
        totals = world.sum_counts(np.array(mine, dtype=np.int64))  # (grad_accum, terms)
        loss_sum = None
        for batch, counts, global_counts in zip(batches, mine, totals.tolist()):
            loss = None
            for term, c, total in zip(objective.loss_terms(model, batch), counts, global_counts):
                term = term * (c / max(total, 1))  # its share of the global mean
                loss = term if loss is None else loss + term
            (loss * (1.0 / s.grad_accum)).backward()
            loss_sum = loss.data if loss_sum is None else loss_sum + loss.data
        world.sum_gradients(model.parameters())  # now every rank holds the global gradient
        loss_sum = world.sum_values(loss_sum).reshape(())  # the global batch's loss
        grad_norm = clip_grad_norm_(model.parameters(), s.clip_norm)
        optimizer.set_lr(lr_at(step, s.lr, s.warmup_steps, s.steps, s.decay))
        optimizer.step()  # the same step on every rank: the models stay equal
        optimizer.zero_grad()
        return loss_sum, grad_norm, flops, tokens

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train (or continue, ``resume``) to ``settings.steps``, or save and stop after step
        ``stop_after``. Returns the step reached, the last evaluation, and what the
        objective's ``finish`` reports after the last step."""
        from tqdm import tqdm

        s, objective, log = self.settings, self.objective, self.log
        kernels.set_kernels(s.kernels)
        model = objective.build_model()
        optimizer = self.make_optimizer(model)
        start = 0
        if resume:
            start = self.load_checkpoint(model, optimizer)
            log(f"resuming at step {start} of {s.steps}")
        model.to(self.device)
        optimizer.load_state_dict(optimizer.state_dict())  # moves its state with the model
        model.train()
        log(objective.summary(model))

        last = min(stop_after or s.steps, s.steps)
        window_flops, window_tokens = 0.0, 0  # for the speeds
        window_start = time.perf_counter()
        result: dict = {}
        # Progress (loss, tokens/s, GFLOP/s, ETA) on stderr; into a log file, every 15 s.
        bar = tqdm(total=s.steps, initial=start, desc=objective.title, unit="step",
                   file=sys.stderr, dynamic_ncols=True, disable=not self.world.is_main,
                   mininterval=0.2 if sys.stderr.isatty() else 15.0)
        say = (lambda message: bar.write(message, file=sys.stderr)) if self.world.is_main \
            else self.log
        step = completed = start
        try:
            for step in range(start + 1, last + 1):
                loss_sum, grad_norm, flops, tokens = self.training_step(step, model, optimizer)
                completed = step
                window_flops += flops
                window_tokens += tokens
                if step == start + 1 and self.device == "cuda":
                    log_attention_choices(say)
                logs = step % s.log_every == 0 or step == s.steps
                if self.device == "cpu" or logs:  # on the GPU, reading the loss is a sync
                    self.window_loss += self.finite_loss(float(loss_sum) / s.grad_accum, step)
                    self.window_losses += 1
                if logs:
                    elapsed = time.perf_counter() - window_start
                    row = {"step": step, "loss": self.window_loss / max(self.window_losses, 1),
                           "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                           "tokens_per_s": window_tokens / elapsed,
                           "gflops_per_s": window_flops / elapsed / 1e9}
                    self.rows.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}",
                                    gflops=f"{row['gflops_per_s']:.1f}")
                    self.window_loss, self.window_losses = 0.0, 0
                    window_flops, window_tokens = 0.0, 0
                    window_start = time.perf_counter()
                if step % s.eval_every == 0 or step == s.steps:
                    result = objective.evaluate(model)
                    self.rows.append({"step": step, **result})
                    say(f"step {step}: {objective.report(result)}")
                if step % s.save_every == 0 or step == s.steps or step == stop_after:
                    self.save_checkpoint(step, model, optimizer)
                bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            if not self.world.is_main:  # rank 0 saves, once
                raise SystemExit(130) from None
            if completed > start:
                self.rows = [r for r in self.rows if r["step"] <= completed]
                self.save_checkpoint(completed, model, optimizer)
            log(f"interrupted: saved step {completed} in {self.run_dir}; continue with "
                f"{self.command} --resume {self.run_dir}")
            raise SystemExit(130) from None
        bar.close()
        final = {"step": step, **result}
        if step == s.steps and self.world.is_main:
            report = objective.finish(model, self.results)
            if report:
                self.rows.append({"step": step, **report})
                self.write_metrics()
                self.plot()  # with what the objective found
            final.update(report)
        elif stop_after is not None:
            log(f"stopped after step {step}; continue with {self.command} --resume "
                f"{self.run_dir}")
        return final

    def finite_loss(self, loss: float, step: int) -> float:
        if not math.isfinite(loss):
            raise UsageError(f"the loss became {loss} at step {step}; the last good checkpoint "
                             f"is kept in {self.run_dir}. Lower --lr or raise --warmup-steps "
                             "and rerun")
        return loss

    # --- the run folder ------------------------------------------------------------------------

    def write_metrics(self) -> None:
        if not self.world.is_main:
            return
        atomic_write_text(self.run_dir / "metrics.jsonl",
                          "".join(json.dumps(r) + "\n" for r in self.rows))

    def save_checkpoint(self, step: int, model, optimizer) -> None:
        """Model, tokenizer, optimizer and objective state of ``step`` as one checkpoint; then
        the metrics logged so far and the loss curve."""
        from safetensors.numpy import save

        if not self.world.is_main:  # the other ranks hold the same model and state
            return

        def write(step_dir: Path) -> None:
            self.objective.save(model, step_dir)
            opt_state = optimizer.state_dict()
            atomic_write_bytes(step_dir / "optimizer.safetensors",
                               save(opt_state["arrays"], metadata={"step": str(step)}))
            atomic_write_json(step_dir / "trainer_state.json", {
                "step": step, "optimizer_step": opt_state["step"],
                "optimizer_hyper": opt_state["hyper"],
                "log_window": [self.window_loss, self.window_losses],
                **self.objective.state_dict(),
            })

        publish_checkpoint(self.run_dir, step, write)
        self.write_metrics()
        self.plot()

    def plot(self) -> None:
        plot_curves(self.run_dir, self.rows, f"{self.objective.title}: {self.run_dir.name}",
                    self.objective.accuracy_label)

    def load_checkpoint(self, model, optimizer) -> int:
        """Load the run folder's checkpoint into the model, the optimizer and the objective,
        and the metrics logged up to it; returns its step."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        current = self.run_dir / "current"
        try:
            state = json.loads((current / "trainer_state.json").read_text())
            loaded = type(model).from_pretrained(current, dtype=model.dtype)
            arrays = load_file(current / "optimizer.safetensors")
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise UsageError(f"the checkpoint in {self.run_dir} is missing or damaged ({e}); "
                             "start a new run or restore the folder") from e
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict({"step": state["optimizer_step"],
                                   "hyper": state["optimizer_hyper"], "arrays": arrays})
        self.objective.load_state_dict(state)
        self.window_loss, self.window_losses = state.get("log_window", (0.0, 0))
        step = int(state["step"])
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # forget what was logged after the checkpoint
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            self.rows = [r for r in rows if r["step"] <= step]
        return step


def log_attention_choices(write) -> None:
    """On the GPU with kernels="auto": which attention path the first step measured faster."""
    from tinymlm.kernels.attention import measured_choices

    for (_, _, seq, _, _), choice in measured_choices.items():
        path = "the fused kernel" if choice["fused"] else "the reference path"
        write(f"attention at S={seq}: {path} (measured fused {choice['fused_ms']:.2f} ms, "
              f"reference {choice['reference_ms']:.2f} ms)")
