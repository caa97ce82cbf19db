"""How many GPU kernel launches one training step of bert-base costs, counted without a GPU.

    PYTHONPATH=. python benchmarks/gpu_launches.py [--layers 12] [--hidden 768]

On the GPU every CuPy operation is (at least) one kernel launch, and at bert-base's 202
parameters the launches themselves (a few microseconds of CPU each, serial) can cost as much
as the work. This script counts them on the CPU by running the step's code, which is the same
code with ``xp = numpy``, on NumPy arrays of a subclass that counts what CuPy would launch a
kernel for:

* every ufunc call: an arithmetic operator (``a * b``, ``m *= beta1``), ``xp.sqrt``, a
  reduction (``x.sum()`` is ``np.add.reduce``), ``xp.add.at`` (a scatter), a matmul (one cuBLAS
  call counted as one launch);
* every other NumPy function on such arrays (``xp.where``, ``xp.concatenate``, ``xp.vdot``,
  ``xp.zeros_like``: a memset), ``astype`` and ``copy``;
* indexing with an array (a gather) and every assignment into an array (a scatter or fill).

Views (reshape, transpose, slicing) launch nothing, and neither do allocations without a
fill. The reference path is what runs on the GPU where no fused kernel is chosen; the fused
Numba kernels' launches are counted by ``tinymlm.kernels.launch`` in the GPU check's training
section, not here. Output: the counts per phase of the step (model forward + backward,
gradient clipping, AdamW, zero_grad), which ``benchmarks/results/gpu_launches.md`` explains.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

counts: Counter = Counter()  # phase -> launches
phase = ["setup"]


class Counted(np.ndarray):
    """An ndarray that counts, in ``counts[phase]``, the operations CuPy launches a kernel for."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        counts[phase[0]] += 1
        inputs = tuple(i.view(np.ndarray) if isinstance(i, Counted) else i for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, Counted) else o for o in kwargs["out"]
            )
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if method == "at":
            return None
        return _counted(result)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ not in VIEWS:
            counts[phase[0]] += 1
        return _counted(super().__array_function__(func, types, args, kwargs))

    def __getitem__(self, index):
        if _advanced(index):
            counts[phase[0]] += 1  # a gather
        return _counted(super().__getitem__(index))

    def __setitem__(self, index, value):
        counts[phase[0]] += 1  # a fill or a scatter
        super().__setitem__(index, value)

    def astype(self, dtype, *args, **kwargs):
        if np.dtype(dtype) != self.dtype or kwargs.get("copy", True):
            counts[phase[0]] += 1
        return _counted(super().astype(dtype, *args, **kwargs))

    def copy(self, *args, **kwargs):
        counts[phase[0]] += 1
        return _counted(super().copy(*args, **kwargs))


# NumPy functions that only make views or read metadata: no kernel on the GPU.
VIEWS = {
    "reshape", "transpose", "swapaxes", "moveaxis", "expand_dims", "squeeze", "ravel", "shape",
    "ndim", "size", "result_type", "can_cast", "broadcast_to", "atleast_1d", "asarray",
    "ascontiguousarray", "empty_like", "may_share_memory", "shares_memory",
}  # fmt: skip

# Arrays made from nothing (no array argument, so no __array_function__ call): the ones CuPy
# fills with a kernel count one launch; all come back counted, so their later use counts too.
CREATORS = {"zeros": 1, "ones": 1, "full": 1, "arange": 1, "eye": 1, "empty": 0}


def counting_creators():
    """Replace numpy's array creators by counting ones; returns a function that undoes it."""
    originals = {name: getattr(np, name) for name in CREATORS}

    def make(name, original):
        def create(*args, **kwargs):
            counts[phase[0]] += CREATORS[name]
            return _counted(original(*args, **kwargs))

        return create

    for name, original in originals.items():
        setattr(np, name, make(name, original))
    contiguous = np.ascontiguousarray  # not dispatched to __array_function__: a copy or a view

    def ascontiguousarray(a, *args, **kwargs):
        if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
            counts[phase[0]] += 1
        result = contiguous(a, *args, **kwargs)
        return _counted(result) if isinstance(a, Counted) else result

    np.ascontiguousarray = ascontiguousarray
    originals["ascontiguousarray"] = contiguous
    return lambda: [setattr(np, name, original) for name, original in originals.items()]


def _advanced(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (np.ndarray, list)) for p in parts)


def _counted(result):
    if isinstance(result, np.generic):  # CuPy gives a 0-d array where NumPy gives a scalar
        result = np.asarray(result)
    if isinstance(result, np.ndarray) and not isinstance(result, Counted):
        return result.view(Counted)
    if isinstance(result, tuple):
        return tuple(_counted(r) for r in result)
    return result


def charge_to_functions():
    """Charge what each autograd Function's forward and backward launch to
    "model forward + backward / <its class>"; returns a function that undoes it."""
    from tinymlm.autograd import Function

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    def charged(cls, method):
        original = cls.__dict__[method]

        def run(self, *args, **kwargs):
            outer = phase[0]
            phase[0] = f"{outer} / {cls.__name__}"
            try:
                return original(self, *args, **kwargs)
            finally:
                phase[0] = outer

        return original, run

    undo = []
    for cls in set(subclasses(Function)):
        for method in ("forward", "backward"):
            if method in cls.__dict__:
                original, run = charged(cls, method)
                setattr(cls, method, run)
                undo.append((cls, method, original))
    return lambda: [setattr(cls, method, original) for cls, method, original in undo]


def count_step(layers: int, hidden: int, batch: int = 4, seq: int = 32) -> dict:
    """Launches of one training step (the trainer's: forward, backward, clip, AdamW, zero_grad)
    on the reference path. The counts do not depend on batch or sequence length."""
    from tinymlm import backend, kernels
    from tinymlm.nn.bert import BertConfig, BertForMaskedLM
    from tinymlm.optim import AdamW, clip_grad_norm_, param_groups

    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    backend.manual_seed(0)
    model = BertForMaskedLM(config)
    for p in model.parameters():
        p.data = p.data.view(Counted)
    optimizer = AdamW(param_groups(model, 0.01), lr=1e-4)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30522, size=(batch, seq))  # (B, S)
    mask = np.ones((batch, seq), dtype=np.int64)  # (B, S)
    mask[1, seq // 2 :] = 0  # one right-padded sequence
    labels = np.where(rng.random((batch, seq)) < 0.15, ids, -100)  # (B, S)
    labels[0, 1] = ids[0, 1]

    def step():
        phase[0] = "model forward + backward"
        out = model(ids.view(Counted), mask.view(Counted), labels=labels.view(Counted))
        out.loss.backward()
        phase[0] = "clip_grad_norm_"
        clip_grad_norm_(model.parameters(), 1.0)
        phase[0] = "AdamW.step"
        optimizer.step()
        phase[0] = "zero_grad"
        optimizer.zero_grad()
        phase[0] = "setup"

    restore = counting_creators()
    unwrap = charge_to_functions()
    try:
        with kernels.use_kernels("reference"):
            step()  # the first step also creates AdamW's moments (two memsets per parameter)
            counts.clear()
            step()
    finally:
        unwrap()
        restore()
    parameters = list(model.parameters())
    decayed = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"])
    return {
        "parameters": len(parameters),
        "decayed": decayed,
        "elements": int(sum(p.data.size for p in parameters)),
        "launches": dict(counts),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    args = p.parse_args(argv)
    found = count_step(args.layers, args.hidden)
    print(f"{found['parameters']} parameters ({found['decayed']} with weight decay), "
          f"{found['elements']:,} elements")  # fmt: skip
    launches = found["launches"]
    phases = Counter()
    for name, n in launches.items():
        phases[name.split(" / ")[0]] += n
    for name, n in phases.items():
        print(f"  {name:40s} {n:6d} launches on the reference path")
        for sub, m in sorted(launches.items(), key=lambda kv: -kv[1]):
            if sub.startswith(name + " / "):
                print(f"    {sub[len(name) + 3:]:38s} {m:6d}")
    print(f"  {'total':40s} {sum(launches.values()):6d}")


if __name__ == "__main__":
    main()
