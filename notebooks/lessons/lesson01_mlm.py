"""Lesson 1: masked language modeling by hand."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 1 — Masked language modeling by hand

A masked language model (BERT) learns from plain text with no labels at all: hide some words
of a sentence and ask the model to say what they were. Before any network, this lesson takes
apart the two pieces of data work that make that possible, using tinymlm's own code:

1. **Tokenizing**: text → words (the *basic tokenizer*) → sub-word pieces (*WordPiece*, with
   `##` continuations and `[UNK]`) → integer ids framed by `[CLS]` … `[SEP]`.
2. **Masking**: choose 15% of the positions, replace 80% of those with `[MASK]`, 10% with a
   random token, leave 10% alone, and label only the chosen positions (every other label is
   `-100`). We will see *why* the 80/10/10 rule exists, and two other ways of choosing
   positions: whole words and spans.

Every claim below is checked by an `assert`: if the code disagreed with the text, the notebook
would stop.
"""),
    code(r"""
import numpy as np
import matplotlib.pyplot as plt

from tinymlm import BertTokenizer, Tensor
from tinymlm.data import MLMCollator, tinyworld, pack_documents, encode_documents
from tinymlm.data import span_length_distribution
from tinymlm.tokenizer import wordpiece
import tinymlm.nn.functional as F

np.set_printoptions(linewidth=110)
"""),
    md(r"""
## 1. The basic tokenizer: text → words

BERT's tokenizer works in two stages. The first, the *basic tokenizer*, knows nothing about the
vocabulary. In order, it cleans the text (drops control characters, turns every kind of
whitespace into a space), splits on whitespace, lowercases and strips accents (for an uncased
model: `é` → `e`), and splits every punctuation character into its own word.
"""),
    code(r"""
vocab_words = tinyworld.vocabulary()          # tinyworld's vocabulary: line i is token id i
tok = BertTokenizer.from_vocab(vocab_words)
print(len(tok), "tokens; the first ten:", vocab_words[:10])

words = tok.basic_tokenizer.tokenize("Héllo,   WORLD!  Paris's café\tis open.")
print(words)
assert words == ["hello", ",", "world", "!", "paris", "'", "s", "cafe", "is", "open", "."]
"""),
    md(r"""
Special tokens are cut out of the raw text *before* the basic tokenizer runs, so `[MASK]` stays
whole even though `[` and `]` are punctuation (Hugging Face does the same):
"""),
    code(r"""
print(tok.tokenize("Paris is the capital of [MASK]."))
assert tok.tokenize("Paris is the capital of [MASK].") == [
    "paris", "is", "the", "capital", "of", "[MASK]", "."]
"""),
    md(r"""
## 2. WordPiece: words → pieces

A vocabulary cannot hold every word. WordPiece splits a word into pieces that *are* in the
vocabulary, greedily: take the **longest** prefix of the word that is a vocabulary entry, then
continue from where it stopped, now looking for entries that start with `##` (the mark of a
piece that continues a word). If at some point no piece matches, the **whole word** becomes
`[UNK]` — not just the part that failed.

A hand-made vocabulary shows every case:
"""),
    code(r"""
small_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
               "the", "cat", "play", "un", "##believ", "##able", "##s", "##ing", "##ed", "."]
small = BertTokenizer.from_vocab(small_vocab)
vocab = small.vocab

for word in ["unbelievable", "cats", "playing", "played", "dog"]:
    print(f"{word:14s} -> {wordpiece(word, vocab, '[UNK]', max_piece_chars=10)}")

print(small.tokenize("The unbelievable cats played."))
assert wordpiece("unbelievable", vocab, "[UNK]", 10) == ["un", "##believ", "##able"]
assert wordpiece("dog", vocab, "[UNK]", 10) == ["[UNK]"]     # no piece matches: the whole word
assert wordpiece("cats", vocab, "[UNK]", 10) == ["cat", "##s"]
"""),
    md(r"""
Why greedy longest-match? It is fast and deterministic, and because common words are whole
vocabulary entries, most words stay one token while rare words fall apart into frequent pieces.
tinyworld's vocabulary holds every word its generator writes, plus single letters and `##`
letters, so *any* ASCII text still tokenizes without `[UNK]` — a word it never saw is spelled
out letter by letter:
"""),
    code(r"""
pieces = tok.tokenize("Quokkas hop.")
print(pieces)
assert "[UNK]" not in pieces
assert pieces[:7] == ["q", "##u", "##o", "##k", "##k", "##a", "##s"]
assert tok.tokenize("France")== ["france"]         # an entity is exactly one token
"""),
    md(r"""
## 3. Ids, `[CLS]`, `[SEP]`, padding

The model sees integer ids. Every sequence is framed as `[CLS] … [SEP]`, and a batch of
sequences of different lengths is padded on the right with `[PAD]`; the `attention_mask`
says which positions are real (1) and which are padding (0).
"""),
    code(r"""
batch = tok(["Paris is the capital of France.", "The cat sat."], padding=True)
for name, array in batch.items():
    print(f"{name:15s}", array.tolist())
print(tok.convert_ids_to_tokens(batch["input_ids"][1].tolist()))

assert batch["input_ids"][0, 0] == tok.cls_token_id and batch["input_ids"][1, 5] == tok.sep_token_id
assert batch["attention_mask"].sum(axis=1).tolist() == [9, 6]
assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
"""),
    md(r"""
## 4. The masking rule

Training text is packed into fixed-length sequences (several short documents per row, RoBERTa
style). `MLMCollator` then makes a training batch from a packed batch, afresh every time it is
called (*dynamic masking*):

1. **Select** each ordinary position independently with probability $p = 0.15$ (special
   tokens and padding are never selected).
2. For each selected position draw $u \sim U(0, 1)$:
   $u < 0.8$ → replace with `[MASK]`; $0.8 \le u < 0.9$ → replace with a random ordinary token;
   otherwise → keep the original token.
3. **Label** the selected positions with their original id; every other label is $-100$.

Here is one batch of real tinyworld sentences:
"""),
    code(r"""
documents = tinyworld.generate_documents(1600, seed=0)
ids, mask = pack_documents(encode_documents(tok, documents), 32,
                           tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
print(ids.shape, "packed sequences of 32 tokens")

collate = MLMCollator(tok, mlm_probability=0.15, mask_replace_prob=0.8,
                      random_replace_prob=0.1, seed=0)
out = collate(ids[:6], mask[:6])
print({k: v.shape for k, v in out.items()})
"""),
    md(r"""
A picture says which positions were chosen and what they became. Each row is a sequence; a
coloured cell is a selected position, with the original token above and what the model sees
below.
"""),
    code(r"""
def show_masking(original, masked, labels, tokenizer, title):
    B, S = original.shape
    kind = np.zeros((B, S))                          # 0 not selected
    selected = labels != -100
    kind[selected & (masked == tokenizer.mask_token_id)] = 1                     # [MASK]
    kind[selected & (masked != original) & (masked != tokenizer.mask_token_id)] = 2  # random
    kind[selected & (masked == original)] = 3                                   # kept
    colors = plt.matplotlib.colors.ListedColormap(["#f4f4f4", "#6baed6", "#fd8d3c", "#74c476"])
    fig, ax = plt.subplots(figsize=(16, 0.75 * B + 1))
    ax.imshow(kind, cmap=colors, vmin=0, vmax=3, aspect="auto")
    for b in range(B):
        for s in range(S):
            word = tokenizer.convert_ids_to_tokens(int(original[b, s]))
            if selected[b, s]:
                seen = tokenizer.convert_ids_to_tokens(int(masked[b, s]))
                ax.text(s, b, f"{word}\n→{seen}", ha="center", va="center", fontsize=6.5)
            else:
                ax.text(s, b, word, ha="center", va="center", fontsize=6.5, color="#555")
    ax.set_xticks([]); ax.set_yticks(range(B))
    handles = [plt.matplotlib.patches.Patch(color=c, label=l) for c, l in
               zip(["#6baed6", "#fd8d3c", "#74c476"], ["→ [MASK]", "→ random", "kept"])]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3)
    ax.set_title(title)
    plt.show()

show_masking(ids[:6], out["input_ids"], out["labels"], tok, "token masking, p = 0.15, 80/10/10")
"""),
    md(r"""
Six rows are too few to see the rates. Over 2,000 sequences (about 30,000 ordinary tokens) the measured rates must match the
stated ones within sampling noise: a rate $\hat r$ measured on $n$ independent trials has
standard deviation $\sqrt{r(1-r)/n}$, and we allow four of those.
"""),
    code(r"""
big = collate(ids[:2000], mask[:2000])
original = ids[:2000]
candidates = (mask[:2000] == 1) & ~np.isin(original, [tok.cls_token_id, tok.sep_token_id])
selected = big["labels"] != -100
n_candidates, n_selected = candidates.sum(), selected.sum()

def within(rate, expected, n, sigmas=4):
    return abs(rate - expected) <= sigmas * np.sqrt(expected * (1 - expected) / n)

selected_rate = n_selected / n_candidates
to_mask = (big["input_ids"] == tok.mask_token_id) & selected
kept = (big["input_ids"] == original) & selected
to_random = selected & ~to_mask & ~kept
rates = {"[MASK]": to_mask.sum() / n_selected, "random": to_random.sum() / n_selected,
         "kept": kept.sum() / n_selected}
print(f"selected {selected_rate:.4f} of {n_candidates} ordinary tokens")
print({k: round(float(v), 4) for k, v in rates.items()})

assert not (selected & ~candidates).any(), "never a special token or padding"
assert within(selected_rate, 0.15, n_candidates)
assert within(rates["[MASK]"], 0.8, n_selected)
assert within(rates["random"], 0.1, n_selected)
# a random draw can land on the original token (1 chance in ~500 here): those count as "kept"
assert within(rates["kept"], 0.1, n_selected, sigmas=5)
assert (big["labels"][selected] == original[selected]).all()     # label = the original id
assert (big["labels"][~selected] == -100).all()                  # everything else: -100
random_tokens = big["input_ids"][to_random]
assert not np.isin(random_tokens, [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id,
                                   tok.mask_token_id, tok.unk_token_id]).any()
"""),
    md(r"""
## 5. Why not always `[MASK]`?

The model is pretrained to be *used* later on text that contains no `[MASK]` at all (a
classifier reads a whole sentence). If every predicted position showed `[MASK]`:

* the input alone would tell the model **which positions are scored**: only `[MASK]`
  positions. Its representations of all other tokens would never be asked to carry the
  token's own identity, and at fine-tuning time — no `[MASK]` anywhere — it would meet inputs
  of a kind it never learned from (the *train/inference mismatch*);
* keeping 10% of the selected tokens unchanged means an ordinary-looking token may be scored,
  so the model must build a good representation of **every** token;
* replacing 10% with a random token means the model cannot simply copy its input either: it
  has to check each token against its context.

We can measure the first point directly. With the rule switched off
(`mask_replace_prob=1.0`), a position whose input is not `[MASK]` is *never* scored; with
80/10/10 it is scored with a small but real probability:
"""),
    code(r"""
def scored_given_visible(collator):
    b = collator(ids[:2000], mask[:2000])
    visible = (b["input_ids"] != tok.mask_token_id) & candidates    # an ordinary-looking input
    return ((b["labels"] != -100) & visible).sum() / visible.sum()

always_mask = MLMCollator(tok, mask_replace_prob=1.0, random_replace_prob=0.0, seed=0)
bert_rule = MLMCollator(tok, seed=0)
p_always, p_bert = scored_given_visible(always_mask), scored_given_visible(bert_rule)
print(f"P(scored | input is a real token): always-[MASK] {p_always:.4f}, 80/10/10 {p_bert:.4f}")
# 80/10/10: 0.15 * 0.2 / (1 - 0.15 * 0.8) = 0.034 of the visible tokens are scored
assert p_always == 0.0
assert abs(p_bert - 0.15 * 0.2 / (1 - 0.15 * 0.8)) < 0.004
"""),
    md(r"""
## 6. Labels and $-100$

The loss is the mean cross-entropy over the **labelled** positions only. The label $-100$ is
PyTorch's (and Hugging Face's) `ignore_index`: those rows contribute nothing, neither to the sum
nor to the count. With $M$ labelled rows,
$$\ell = \frac{1}{M} \sum_{i:\, y_i \neq -100} -\log \operatorname{softmax}(x_i)_{y_i}.$$
A batch with no labelled position at all gives exactly $0$ here (Hugging Face's model returns
NaN in that case, a long-standing complaint).
"""),
    code(r"""
rng = np.random.default_rng(0)
logits = rng.standard_normal((5, len(tok))).astype(np.float32)
labels = np.array([7, -100, 12, -100, 3])

loss = F.cross_entropy(Tensor(logits), labels).item()
log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
by_hand = -np.mean([log_probs[i, labels[i]] for i in range(5) if labels[i] != -100])
print(f"tinymlm {loss:.6f}   by hand {by_hand:.6f}")
assert abs(loss - by_hand) < 1e-5
assert F.cross_entropy(Tensor(logits), np.full(5, -100)).item() == 0.0
"""),
    md(r"""
## 7. Whole words and spans

Token masking can hide `##k` while showing `q ##u ##o … ##a`: the model then only has to finish
a spelling, an easy task that teaches little. Two remedies:

* **Whole-word masking**: select *words* with probability $p$; all pieces of a chosen word are
  selected together.
* **Span masking** (SpanBERT): select runs of whole words. A span's length in words is
  $\ell \sim \text{Geometric}(0.2)$ truncated to $1..10$,
  $P(\ell) \propto 0.2 \cdot 0.8^{\ell-1}$, placed at random until $\max(1, \operatorname{round}(p\,n))$
  of the $n$ tokens of the sequence are selected; the 80/10/10 decision is made once per span.

Sentences with unknown words (spelled out in `##` letters) make the difference visible:
"""),
    code(r"""
texts = ["Quokkas hop around Rottnest.", "Wombats dig burrows in Tasmania.",
         "Paris is the capital of France.", "Platypuses lay eggs."] * 3
enc = tok(texts, padding=True)
wwm = MLMCollator(tok, strategy="whole_word", mlm_probability=0.3, seed=1)
out_wwm = wwm(enc["input_ids"], enc["attention_mask"])
show_masking(enc["input_ids"][:4], out_wwm["input_ids"][:4], out_wwm["labels"][:4], tok,
             "whole-word masking (p = 0.3 to make it visible)")

def words_of(row_ids, row_mask):
    # the positions of each word: a token and the ## pieces right after it
    words, current = [], []
    for s, (i, m) in enumerate(zip(row_ids, row_mask)):
        token = tok.convert_ids_to_tokens(int(i))
        if not m or i in (tok.cls_token_id, tok.sep_token_id):
            continue
        if token.startswith("##") and current:
            current.append(s)
        else:
            if current:
                words.append(current)
            current = [s]
    return words + ([current] if current else [])

for b in range(len(texts)):
    chosen = out_wwm["labels"][b] != -100
    for word in words_of(enc["input_ids"][b], enc["attention_mask"][b]):
        assert chosen[word].all() or not chosen[word].any(), "a word is selected whole or not at all"
print("every word was selected whole or not at all")
"""),
    code(r"""
probabilities = span_length_distribution(0.2, 10)
mean_length = (np.arange(1, 11) * probabilities).sum()
plt.figure(figsize=(5, 2.5))
plt.bar(np.arange(1, 11), probabilities)
plt.xlabel("span length (words)"); plt.ylabel("P"); plt.title(f"mean {mean_length:.2f} words")
plt.show()
assert abs(mean_length - 3.8) < 0.05        # SpanBERT's 3.8

span = MLMCollator(tok, strategy="span", seed=0)
out_span = span(ids[:200], mask[:200])
show_masking(ids[:4], out_span["input_ids"][:4], out_span["labels"][:4], tok, "span masking")
n = candidates[:200].sum(axis=1)
chosen = (out_span["labels"] != -100).sum(axis=1)
budget = np.maximum(1, np.round(0.15 * n))
print("selected:", chosen[:8].tolist(), " budget:", budget[:8].astype(int).tolist())
assert (chosen >= budget).all() and (chosen - budget < 10).all()   # overshoot < one word
"""),
    md(r"""
Google's original BERT used yet another choice, **exact-count** masking: exactly
$k = \min(20, \max(1, \operatorname{round}(0.15\,n)))$ positions per sequence, so every
sequence contributes the same number of predictions:
"""),
    code(r"""
exact = MLMCollator(tok, strategy="exact", seed=0)
out_exact = exact(ids[:200], mask[:200])
k = np.minimum(20, np.maximum(1, np.round(0.15 * n)))
assert ((out_exact["labels"] != -100).sum(axis=1) == k).all()
print("exactly k predictions per sequence; k for the first rows:", k[:10].astype(int).tolist())
"""),
    md(r"""
## Summary

* Tokenizing is *basic tokenizer* (clean, split, lowercase, strip accents, split punctuation)
  then *WordPiece* (greedy longest match, `##` continuations, `[UNK]` for a word with an
  unmatched piece); special tokens are cut out first.
* Masking selects 15% of the ordinary tokens; 80% become `[MASK]`, 10% a random ordinary
  token, 10% stay. Labels hold the original id at selected positions and $-100$ elsewhere.
* The 10% random / 10% kept exist because `[MASK]` never appears after pretraining: the model
  must represent every token well, and not trust its input blindly.
* Whole-word and span masking make the task harder in a useful way.

Next: **Lesson 2** builds the autograd engine that will learn from these labels.
"""),
]
