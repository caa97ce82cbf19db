"""Module and Parameter: the containers that give a model its named, movable parameters.

A ``Module`` records every ``Parameter`` and sub-``Module`` assigned to it as an attribute, in
order, so ``named_parameters()`` yields dotted names ("encoder.layer.0.attention.self.query.weight")
exactly as PyTorch would. A parameter shared by two modules (tied weights) appears once, under
the first name that reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tinymlm import backend
from tinymlm.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable parameter: requires_grad by default."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- parameters -------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- modes and devices ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, target) -> Module:
        """Move every parameter to a device ('cpu'/'cuda') or cast it to a float dtype, in place.

        Parameters keep their identity, so an optimizer made before the move still holds them.
        """
        for p in self.parameters():
            if isinstance(target, str):
                p.data = backend.to_device(p.data, target)
            else:
                p.data = p.data.astype(target)
            if p.grad is not None:
                p.grad = None
        return self

    @property
    def device(self) -> str:
        return next(iter(self.parameters())).device

    @property
    def dtype(self):
        return next(iter(self.parameters())).dtype

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> NumPy copy of each parameter (tied parameters once)."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list, list]:
        """Copy arrays into the parameters (keeping each parameter's device and dtype).

        Returns (missing, unexpected) names; with ``strict`` either one is an error.
        """
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(value.shape)} in the state but "
                    f"{p.shape} in the model"
                )
            xp = backend.get_array_module(p.data)
            p.data = xp.asarray(backend.to_device(value, p.device), dtype=p.dtype).copy()
        return missing, unexpected


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> None:
        setattr(self, str(len(self._items)), module)
        self._items.append(module)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Module:
        return self._items[i]
