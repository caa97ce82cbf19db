"""Model folders in Hugging Face's format: config.json + model.safetensors.

Saving writes both files atomically (a reader sees the old folder or the new one, never a
half-written file). Loading follows Hugging Face's rules so that folders move freely between
tinymlm and ``transformers`` 4.x / 5.x:

- weight names are Hugging Face's; a checkpoint of the bare encoder (names without ``bert.``)
  loads into ``BertModel``, and a ``BertForMaskedLM`` checkpoint's encoder does too;
- missing weights are an error that names them; buffers and tied copies that carry no
  information (``embeddings.position_ids``, ``cls.predictions.decoder.*``) are ignored; any
  other unexpected weight (a pooler, a head this model lacks) is named in a warning;
- the stored dtype is kept unless ``dtype=`` is given. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from tinymlm import __version__
from tinymlm.fileio import atomic_write_bytes, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
                np.dtype(np.float16): "float16"}
_IGNORED_SUFFIXES = ("embeddings.position_ids", "cls.predictions.decoder.weight",
                     "cls.predictions.decoder.bias")


class CheckpointError(ValueError):
    """A model folder that is missing, damaged or does not fit the model."""


def save_model(model, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` into the folder ``path``."""
    from safetensors.numpy import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    dtype_name = _DTYPE_NAMES.get(model.dtype, str(model.dtype))
    config = model.config.to_dict()
    config.update(
        architectures=[type(model).__name__],
        model_type="bert",
        dtype=dtype_name,  # transformers 5.x reads "dtype", 4.x "torch_dtype"
        torch_dtype=dtype_name,
        tinymlm_version=__version__,
    )
    # Weights first, config last: a folder whose config.json exists is complete.
    atomic_write_bytes(path / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    atomic_write_json(path / CONFIG_NAME, config)


def read_config(path):
    from tinymlm.nn.bert import BertConfig

    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} is not a model folder: {CONFIG_NAME} is missing (expected a folder written "
            "by save_pretrained or by tinymlm.train)"
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file} is damaged ({e}); save the model again") from e
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{path} holds a {model_type!r} model; tinymlm loads BERT models")
    for key in ("dtype", "torch_dtype", "architectures", "model_type", "tinymlm_version",
                "transformers_version"):
        raw.pop(key, None)
    return BertConfig.from_dict(raw)


def read_weights(path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        hint = " (pytorch_model.bin is not read: tinymlm never unpickles)" if (
            path / "pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{weights} is missing{hint}; save the model with save_pretrained")
    try:
        return load_file(weights)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{weights} is damaged or unreadable ({e}); save it again") from e


def _match_names(state: dict, model) -> dict:
    """Rename stored weights to the model's names: add or strip the ``bert.`` prefix."""
    wanted = {name for name, _ in model.named_parameters()}
    prefix = "bert."
    renamed = {}
    for name, value in state.items():
        if name not in wanted:
            if prefix + name in wanted:
                name = prefix + name
            elif name.startswith(prefix) and name[len(prefix):] in wanted:
                name = name[len(prefix):]
        renamed[name] = value
    return renamed


def load_model(cls, path, dtype=None, device: str = "cpu", config=None):
    """Build ``cls`` (BertModel, BertForMaskedLM, ...) from a Hugging Face-format folder.

    ``config`` replaces the folder's config.json (a fine-tuning head sets its labels there).
    Weights whose names start with one of ``cls._keys_to_initialize`` (a fine-tuning head, a
    pooler) may be missing: they keep their fresh initialisation and a warning names them.
    """
    config = read_config(path) if config is None else config
    model = _skeleton(cls, config)
    state = _match_names(read_weights(path), model)
    stored = {v.dtype for v in state.values() if v.dtype.kind == "f"}
    target = np.dtype(dtype) if dtype is not None else (stored.pop() if len(stored) == 1
                                                         else np.dtype(np.float32))
    model.to(target)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in state]
    fresh = [n for n in missing if n.startswith(getattr(cls, "_keys_to_initialize", ()))]
    missing = [n for n in missing if n not in fresh]
    if missing:
        head = [n for n in missing if n.startswith("cls.")]
        hint = (" — this checkpoint has no MLM head (an encoder-only model): load it with "
                "BertModel.from_pretrained") if head and len(head) == len(missing) else ""
        raise CheckpointError(f"{path} lacks weights the model needs: {missing}{hint}")
    unexpected = [n for n in state if n not in params and not n.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        warnings.warn(
            f"weights in {path} not used by {cls.__name__}: {unexpected}", stacklevel=3
        )
    if fresh:
        warnings.warn(
            f"weights of {cls.__name__} not in {path}, newly initialised: {fresh}; train the "
            "model on a downstream task before using it for predictions", stacklevel=3
        )
    model.load_state_dict({n: state[n] for n in params if n not in fresh}, strict=False)
    model.to(device)
    model.eval()
    return model


def _skeleton(cls, config):
    """An instance of ``cls`` to load into (its random initialisation is overwritten)."""
    from tinymlm.nn.bert import BertModel

    if cls is BertModel:
        return cls(config, add_pooling_layer=False)
    return cls(config)
