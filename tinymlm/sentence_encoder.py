"""Sentence embeddings: one vector per text from a BERT encoder, for similarity and search.

    encoder = SentenceEncoder.from_pretrained("path/to/all-MiniLM-L6-v2")
    vectors = encoder.encode(["A man plays a guitar.", "Someone plays music."])  # (2, 384)
    vectors[0] @ vectors[1]                      # their cosine similarity (rows have norm 1)

An embedding is the encoder's hidden states pooled into one vector, then (by default)
scaled to length 1, so that a dot product is a cosine similarity:

    mean pooling   e_b = Σ_s m_bs · h_bs / max(Σ_s m_bs, 1e-9)     over the real tokens of row b
    [CLS] pooling  e_b = h_b0
    normalising    ê_b = e_b / max(‖e_b‖, 1e-12)

These are sentence-transformers' formulas (and its epsilons), so a sentence-transformers
model folder gives its embeddings here. Such a folder says how it pools in ``modules.json``
(the list of modules: Transformer, Pooling, Normalize), ``1_Pooling/config.json`` (the pooling
mode) and ``sentence_bert_config.json`` (``max_seq_length``); a plain BERT folder (a tinymlm
training run, a fine-tuned model) has none of them and gets mean pooling and the model's
longest input. ``save_pretrained`` writes the same files, so sentence-transformers loads what
tinymlm trains.

The pooling functions work on raw arrays (inference) and on Tensors (training: the
contrastive objective backpropagates through them), and keep the dtype and the device.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from tinymlm import backend, ops
from tinymlm.autograd import Tensor, no_grad, raw
from tinymlm.checkpoint import CheckpointError
from tinymlm.fileio import atomic_write_json

POOLING_MODES = ("mean", "cls")
MODULES_FILE = "modules.json"
POOLING_FOLDER = "1_Pooling"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
PROGRESS_FROM_BATCHES = 8  # a progress bar on stderr once encoding takes more batches
_TOKENIZE_CHUNK = 1024  # texts tokenised (and padded) at a time: bounds the memory it takes

# sentence-transformers' module types, by the last part of their name
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"


# --- pooling, on arrays or Tensors ---------------------------------------------------------------


def mean_pooling(last_hidden_state, attention_mask):
    """Average each row's hidden states over its real tokens: (B, S, H), (B, S) -> (B, H).

    Padding positions (mask 0) do not count; a row with no real token gives zeros. A Tensor
    in gives a Tensor out (with its gradient), an array gives an array; the dtype is kept.
    """
    hidden = last_hidden_state
    like = raw(hidden)
    xp = backend.get_array_module(like)
    mask = backend.asarray_on(raw(attention_mask), like).astype(like.dtype)  # (B, S)
    if mask.shape != like.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {mask.shape} but the hidden states are {like.shape}: "
            "pass the (B, S) mask the tokenizer returned with the ids"
        )
    summed = (hidden * mask[:, :, None]).sum(axis=1)  # (B, H)
    counts = xp.maximum(mask.sum(axis=1, keepdims=True), like.dtype.type(1e-9))  # (B, 1)
    return summed / counts  # (B, H)


def cls_pooling(last_hidden_state, attention_mask=None):
    """The hidden state of each row's first token, [CLS]: (B, S, H) -> (B, H)."""
    return last_hidden_state[:, 0]  # (B, H)


POOLING = {"mean": mean_pooling, "cls": cls_pooling}


def l2_normalize(x, eps: float = 1e-12):
    """Each row divided by its length, max(‖x‖, eps): (N, H) -> (N, H), rows of norm 1.

    On a Tensor the clamp is a ``where``, so a zero row stays zero and its gradient finite.
    """
    like = raw(x)
    xp = backend.get_array_module(like)
    eps = like.dtype.type(eps)
    if not isinstance(x, Tensor):
        return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), eps)  # (N, H)
    squared = (x * x).sum(axis=-1, keepdims=True)  # (N, 1)
    large = raw(squared) > eps * eps
    # sqrt only where it is safe: its gradient at 0 is infinite even where `where` drops it
    norm = ops.where(large, ops.where(large, squared, 1.0).sqrt(), eps)  # (N, 1)
    return x / norm  # (N, H)


def cosine_similarity(a, b, eps: float = 1e-12):
    """Cosine similarity of the rows of a (N, H) and b (N, H), or of two vectors (H,)."""
    a, b = raw(a), raw(b)
    xp = backend.get_array_module(a, b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cosine_similarity: sizes differ ({a.shape} vs {b.shape})")
    dot = (a * b).sum(axis=-1)  # (N,)
    norms = xp.linalg.norm(a, axis=-1) * xp.linalg.norm(b, axis=-1)  # (N,)
    return dot / xp.maximum(norms, a.dtype.type(eps))


# --- the folder's sentence-transformers files ----------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); repair it or save the model again") from e


def read_sentence_config(folder: Path) -> dict:
    """How a folder turns hidden states into an embedding: ``model_folder`` (where the BERT
    files are), ``pooling`` (mean or cls) and ``max_seq_length`` (None: the model's limit).
    A Normalize module changes nothing here: ``encode`` normalises unless told not to."""
    found = {"model_folder": folder, "pooling": "mean", "max_seq_length": None}
    if not (folder / MODULES_FILE).is_file():
        return found  # a plain BERT folder
    modules = _read_json(folder / MODULES_FILE)
    if not isinstance(modules, list):
        raise CheckpointError(f"{folder / MODULES_FILE} is not a list of modules")
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == _TRANSFORMER:
            found["model_folder"] = path
            if (path / SENTENCE_CONFIG_FILE).is_file():
                found["max_seq_length"] = _read_json(path / SENTENCE_CONFIG_FILE).get(
                    "max_seq_length")
        elif kind == _POOLING:
            found["pooling"] = _pooling_mode(_read_json(path / "config.json"), path)
        elif kind != _NORMALIZE:
            raise CheckpointError(f"{folder} has a sentence-transformers {kind} module, which "
                                  "tinymlm does not implement (it reads Transformer, Pooling "
                                  "and Normalize)")
    return found


def _pooling_mode(config: dict, path: Path) -> str:
    modes = [name for name, key in (("mean", "pooling_mode_mean_tokens"),
                                    ("cls", "pooling_mode_cls_token")) if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v
              and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token")]
    if len(modes) != 1 or others:
        raise CheckpointError(f"{path}: tinymlm pools with exactly one of mean or cls, but this "
                              f"folder asks for {modes + others}")
    return modes[0]


# --- the encoder ---------------------------------------------------------------------------------


class SentenceEncoder:
    """A BertModel, its tokenizer and a pooling rule: texts in, one vector per text out.

    ``max_seq_length`` is the longest input in tokens ([CLS] and [SEP] included); longer texts
    are cut, as sentence-transformers cuts them.
    """

    def __init__(self, model, tokenizer, pooling: str = "mean", max_seq_length: int | None = None):
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is unknown: use one of {list(POOLING_MODES)}")
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        longest = min(model.config.max_position_embeddings, tokenizer.model_max_length)
        self.max_seq_length = min(int(max_seq_length or longest), longest)

    @classmethod
    def from_pretrained(cls, path, device: str = "cpu", pooling: str | None = None,
                        dtype=None) -> SentenceEncoder:
        """Load a sentence-transformers folder or any BERT model folder (see the module's
        docstring); ``pooling`` overrides the folder's choice. Raises ``CheckpointError`` (a
        ValueError) for a folder that is not a model."""
        from tinymlm.nn.bert import BertModel
        from tinymlm.tokenizer import BertTokenizer

        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder: give a model folder (a training "
                                  "run, save_pretrained's output, or a sentence-transformers one)")
        found = read_sentence_config(folder)
        with warnings.catch_warnings():
            # A pretraining run's MLM head or a checkpoint's pooler is not part of a sentence
            # embedding: leaving them out is the point, not something to warn about.
            warnings.filterwarnings("ignore", message="weights in .* not used by BertModel")
            model = BertModel.from_pretrained(found["model_folder"], dtype=dtype, device=device)
        try:
            tokenizer = BertTokenizer.from_pretrained(found["model_folder"])
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: {e}") from e
        return cls(model, tokenizer, pooling or found["pooling"], found["max_seq_length"])

    @property
    def device(self) -> str:
        return self.model.device

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def to(self, device: str) -> SentenceEncoder:
        self.model.to(device)
        return self

    def embed(self, batch: dict):
        """Pooled embeddings (B, H) of a tokenised batch, as a Tensor with its gradient (for
        training); not normalised."""
        hidden = self.model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        return POOLING[self.pooling](hidden, batch["attention_mask"])  # (B, H)

    def encode(self, texts, batch_size: int = 32, normalize: bool = True,
               progress: bool | None = None) -> np.ndarray:
        """Embeddings of ``texts`` (a list of strings; one string counts as a list of one):
        a (N, H) float32 NumPy array, row i for text i, of norm 1 when ``normalize``.

        Texts are encoded in batches of similar length (sorted by token count, so a batch pads
        little), without dropout or gradients, on the model's device. ``progress``: a bar on
        stderr (None: when there are more than PROGRESS_FROM_BATCHES batches).
        """
        from tqdm import tqdm

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes a list of strings")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows = tokenize(self.tokenizer, texts, self.max_seq_length)
        order = np.argsort([-len(r) for r in rows], kind="stable")  # longest first
        out = np.empty((len(texts), self.dimension), dtype=np.float32)  # (N, H)
        starts = range(0, len(texts), batch_size)
        show = len(starts) > PROGRESS_FROM_BATCHES if progress is None else progress
        was_training = self.model.training
        self.model.eval()
        try:
            with no_grad():
                for start in tqdm(starts, desc="encoding", unit="batch", file=sys.stderr,
                                  disable=not show):
                    chosen = order[start : start + batch_size]
                    batch = pad([rows[i] for i in chosen], self.tokenizer.pad_token_id)
                    pooled = raw(self.embed(batch))  # (b, H) on the model's device
                    if normalize:
                        pooled = l2_normalize(pooled)
                    out[chosen] = backend.to_numpy(pooled)
        finally:
            self.model.train(was_training)
        return out

    def save_pretrained(self, path) -> None:
        """The model, the tokenizer and sentence-transformers' files (Transformer, Pooling,
        Normalize): a folder both ``from_pretrained`` here and sentence-transformers load."""
        folder = Path(path)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        atomic_write_json(folder / SENTENCE_CONFIG_FILE,
                          {"max_seq_length": self.max_seq_length,
                           "do_lower_case": False})  # the tokenizer itself lowercases
        atomic_write_json(folder / POOLING_FOLDER / "config.json", {
            "word_embedding_dimension": self.dimension,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        })
        modules = [("0", "", _TRANSFORMER), ("1", POOLING_FOLDER, _POOLING),
                   ("2", "2_Normalize", _NORMALIZE)]
        # Written last: a folder with modules.json is complete.
        atomic_write_json(folder / MODULES_FILE, [
            {"idx": i, "name": name, "path": sub, "type": f"sentence_transformers.models.{kind}"}
            for i, (name, sub, kind) in enumerate(modules)
        ])


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each text's ids, [CLS] ... [SEP], cut to ``max_length`` tokens."""
    rows = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        enc = tokenizer(texts[start : start + _TOKENIZE_CHUNK], padding=True, truncation=True,
                        max_length=max_length)
        lengths = enc["attention_mask"].sum(axis=1)  # (chunk,)
        rows.extend(ids[:n] for ids, n in zip(enc["input_ids"], lengths))
    return rows


def pad(rows: list[np.ndarray], pad_id: int) -> dict:
    """Rows of ids padded on the right into int64 (B, S) ``input_ids`` and ``attention_mask``."""
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # (B, S)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, S)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = row
        attention_mask[b, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
