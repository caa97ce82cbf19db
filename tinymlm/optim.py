"""AdamW, learning-rate schedules and gradient clipping.

AdamW (Loshchilov & Hutter) with PyTorch's update, step t = 1, 2, ...:

    p ← p − lr·λ·p                                   decoupled weight decay
    m ← β₁ m + (1 − β₁) g,     v ← β₂ v + (1 − β₂) g²
    p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

Weight decay is for matrices and embeddings only: ``param_groups(model, weight_decay)`` puts
biases and LayerNorm weights in a group without it, as BERT's recipe does.
"""

from __future__ import annotations

import math

import numpy as np

from tinymlm import backend, kernels


def param_groups(model, weight_decay: float) -> list[dict]:
    """Two groups: decayed (weights of Linear / Embedding) and not (biases, LayerNorm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class AdamW:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        params = list(params)
        if params and isinstance(params[0], dict):
            groups = params
        else:
            groups = [{"params": params}]
        self.defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.param_groups = [{**self.defaults, **g, "params": list(g["params"])} for g in groups]
        self.step_count = 0
        self.state: dict[int, tuple] = {}  # id(param) -> (m, v)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, decay = group["eps"], group["weight_decay"]
            step_size = lr / (1 - beta1**t)
            correction2 = math.sqrt(1 - beta2**t)
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = backend.get_array_module(p.data)
                if id(p) not in self.state:
                    self.state[id(p)] = (xp.zeros_like(p.data), xp.zeros_like(p.data))
                m, v = self.state[id(p)]
                g = p.grad
                if self._fused_cpu_step(
                    p.data, g, m, v, lr, beta1, beta2, eps, decay, step_size, correction2
                ):
                    continue
                if decay:
                    p.data *= 1 - lr * decay
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * (g * g)
                denom = xp.sqrt(v)
                denom *= 1 / correction2
                denom += eps
                p.data -= step_size * (m / denom)

    @staticmethod
    def _fused_cpu_step(p, g, m, v, lr, beta1, beta2, eps, decay, step_size, correction2) -> bool:
        """The same update in one Numba pass over NumPy arrays (no temporaries); False when the
        switch or the arrays send it down the plain path above."""
        fused = kernels.select("adamw", p, g, m, v)
        if fused is None:
            return False
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=decay)
        return fused.impl(p, g, m, v, **hyper, step_size=step_size, correction2=correction2)

    # --- saving and resuming ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{'step': t, 'hyper': [...], 'exp_avg.i' / 'exp_avg_sq.i': NumPy arrays by position}."""
        arrays, hyper = {}, []
        i = 0
        for group in self.param_groups:
            hyper.append({k: v for k, v in group.items() if k != "params"})
            for p in group["params"]:
                if id(p) in self.state:
                    m, v = self.state[id(p)]
                    arrays[f"exp_avg.{i}"] = backend.to_numpy(m)
                    arrays[f"exp_avg_sq.{i}"] = backend.to_numpy(v)
                i += 1
        return {"step": self.step_count, "hyper": hyper, "arrays": arrays}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for group, hyper in zip(self.param_groups, state["hyper"]):
            group.update({k: (tuple(v) if k == "betas" else v) for k, v in hyper.items()})
        arrays = state["arrays"]
        i = 0
        self.state.clear()
        for group in self.param_groups:
            for p in group["params"]:
                if f"exp_avg.{i}" in arrays:
                    xp = backend.get_array_module(p.data)
                    to = backend.device_of(p.data)
                    self.state[id(p)] = (
                        xp.asarray(backend.to_device(arrays[f"exp_avg.{i}"], to), dtype=p.dtype),
                        xp.asarray(backend.to_device(arrays[f"exp_avg_sq.{i}"], to), dtype=p.dtype),
                    )
                i += 1

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr


def fused_update_scalars(dtype, *, lr, beta1, beta2, eps, weight_decay, step_size,
                         correction2) -> tuple:
    """The constants of one AdamW update as the fused kernels take them (after p, g, m, v), in
    the parameter's dtype so that no float64 creeps into a float32 kernel: the decay factor,
    β₁, 1 − β₁, β₂, 1 − β₂, 1/√(1 − β₂ᵗ), ε and the step size."""
    t = np.dtype(dtype).type
    return (t(1 - lr * weight_decay), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
            t(1 / correction2), t(eps), t(step_size))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          decay: str = "linear", min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then linear or cosine decay
    to ``min_ratio·base_lr`` at ``total_steps``. ``step`` counts from 1 (the first update)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif decay == "linear":
        shape = 1 - progress
    elif decay == "constant":
        shape = 1.0
    else:
        raise ValueError(f"unknown decay {decay!r}: use linear, cosine or constant")
    return base_lr * (min_ratio + (1 - min_ratio) * shape)


def clip_grad_norm_(params, max_norm: float):
    """Scale gradients so their global L2 norm is at most ``max_norm`` (PyTorch's rule).

    Returns the norm before clipping as a 0-d array on the gradients' device; nothing here
    waits for the GPU.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return np.zeros(())
    xp = backend.get_array_module(grads[0])
    # One launch per gradient for its sum of squares, then one to stack them and one to add
    # them up (a Python sum of 0-d device arrays would launch once per addition).
    squares = xp.stack([xp.vdot(g.ravel(), g.ravel()) for g in grads])  # (P,)
    total = xp.sqrt(squares.sum())
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(grads[0].dtype)
    for g in grads:
        g *= coef
    return total
