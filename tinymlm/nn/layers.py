"""The basic layers: Linear, Embedding, LayerNorm, Dropout (PyTorch's names and shapes).

New parameters are float32 and drawn from the seeded CPU generator (``tinymlm.manual_seed``);
BERT re-initialises them its own way (normal(0, 0.02), zero biases).
"""

from __future__ import annotations

import math

import numpy as np

from tinymlm import backend
from tinymlm.nn import functional as F
from tinymlm.nn.module import Module, Parameter


def _uniform(shape, bound: float) -> np.ndarray:
    rng = backend.default_generator("cpu")
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Linear(Module):
    """y = x Wᵀ + b with W (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # PyTorch's default range
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """A lookup table: ids (...) -> rows (..., embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        rng = backend.default_generator("cpu")
        weight = rng.standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.padding_idx = padding_idx
        self.weight = Parameter(weight)

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype=np.float32))
        else:
            self.weight = self.bias = None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)
