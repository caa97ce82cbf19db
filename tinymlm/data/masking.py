"""Masked language modeling: choose the positions a model must predict, and hide them.

``MLMCollator`` turns a packed batch (``input_ids``, ``attention_mask``) into a training batch
with **dynamic masking** (RoBERTa): a fresh choice of positions every time a batch is drawn.

Selection never touches special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) or padding. Four
strategies decide *which* ordinary positions are selected:

* ``"token"`` (BERT, Hugging Face's ``DataCollatorForLanguageModeling``): every position
  independently with probability p, so a sequence of n tokens gets Binomial(n, p) of them.
* ``"exact"`` (Google's original BERT): exactly k = min(max_predictions, max(1, round(p·n)))
  positions per sequence, chosen uniformly without replacement (n = ordinary tokens; rounding
  is Python's, half to even).
* ``"whole_word"``: every *word* (a token and the ``##`` pieces after it) independently with
  probability p; all pieces of a chosen word are selected together.
* ``"span"`` (SpanBERT): spans of whole words with length ℓ ~ Geometric(span_p) truncated to
  1..max_span, P(ℓ) ∝ span_p·(1 − span_p)^(ℓ−1) (mean 3.8 words for 0.2 and 10), placed at
  random anchors until max(1, round(p·n)) tokens are selected (see ``choose_spans``).
* ``"salient"`` (REALM's salient span masking, Guu et al. 2020, on single-token entities): in
  every sentence that names an entity (a token of ``salient_ids``), one of them, chosen
  uniformly, is selected; every other position independently with probability p, as in
  ``"token"``. A sentence ends after ".", "?" or "!" and at [SEP]. Facts are carried by
  entities ("Paris is the capital of [MASK]."): this makes every sentence that states a
  fact ask for it, with the other entity of the fact usually in view.

Each selected position is then, by default, replaced with [MASK] (80%), with a random token
(10%) or left as it is (10%); its label is the original id, every other label is -100. One
uniform draw u per position decides: u < m → [MASK]; m <= u < m + r → random; else keep.
That is the distribution of Hugging Face's two Bernoulli draws (m, then r / (1 − m) of the
rest). For ``"span"`` the decision is made once per span, as SpanBERT does.

The one deliberate difference from Hugging Face: random replacements are drawn uniformly from
the *ordinary* vocabulary, never a special token (Hugging Face draws from the whole
vocabulary, special ids included).

The collator owns its random generator (NumPy PCG64); ``state_dict()`` / ``load_state_dict()``
save and restore it as plain JSON, so a resumed run masks exactly like an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("token", "exact", "whole_word", "span", "salient")


def span_length_distribution(span_p: float = 0.2, max_span: int = 10) -> np.ndarray:
    """P(ℓ) for ℓ = 1..max_span: the geometric law p(1 − p)^(ℓ−1), truncated and renormalised."""
    lengths = np.arange(1, max_span + 1)
    weights = span_p * (1.0 - span_p) ** (lengths - 1)
    return weights / weights.sum()


def choose_spans(
    rng: np.random.Generator,
    word_lengths: np.ndarray,
    budget: int,
    span_p: float = 0.2,
    max_span: int = 10,
) -> list[tuple[int, int]]:
    """SpanBERT's span sampler over the words of one sequence.

    ``word_lengths[w]`` is the number of tokens of word w; ``budget`` the number of tokens to
    select. Repeatedly: draw a length ℓ in words and an anchor word; an anchor that is already
    selected is drawn again, otherwise the span covers words [anchor, anchor + ℓ) (cut at the
    end of the sequence; it may run into earlier spans, as in SpanBERT, so that long spans are
    not rejected more often than short ones). A span stops early where its next new word would
    pass the budget, but always keeps its anchor, so the total overshoots the budget by less
    than one word. Returns (anchor, words covered) pairs in the order they were drawn.
    """
    n_words = len(word_lengths)
    budget = min(int(budget), int(np.sum(word_lengths)))
    probabilities = span_length_distribution(span_p, max_span)
    taken = np.zeros(n_words, dtype=bool)
    spans: list[tuple[int, int]] = []
    selected = 0
    while selected < budget:
        length = 1 + int(rng.choice(max_span, p=probabilities))
        anchor = int(rng.integers(n_words))
        if taken[anchor]:
            continue
        end = min(anchor + length, n_words)
        for word in range(anchor, end):
            if taken[word]:
                continue
            if word > anchor and selected + word_lengths[word] > budget:
                end = word
                break
            taken[word] = True
            selected += int(word_lengths[word])
        spans.append((anchor, end - anchor))
    return spans


class MLMCollator:
    """Dynamic masking for masked language modeling (see the module docstring for the rules).

    ``collate(input_ids, attention_mask)`` takes int arrays of shape (B, S) and returns a dict
    of int64 NumPy arrays: ``input_ids`` (a masked copy), ``attention_mask``, ``labels``
    (the original id where a position is to be predicted, -100 elsewhere).
    """

    def __init__(
        self,
        tokenizer,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = 0,
        strategy: str = "token",
        max_predictions: int = 20,
        span_p: float = 0.2,
        max_span: int = 10,
        salient_ids=None,
    ):
        for name, value in [
            ("mlm_probability", mlm_probability),
            ("mask_replace_prob", mask_replace_prob),
            ("random_replace_prob", random_replace_prob),
        ]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if mask_replace_prob + random_replace_prob > 1.0:
            raise ValueError(
                "mask_replace_prob + random_replace_prob must be at most 1 (the rest is kept), "
                f"got {mask_replace_prob} + {random_replace_prob}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if int(max_predictions) < 1:
            raise ValueError(f"max_predictions must be >= 1, got {max_predictions}")
        if not 0.0 < span_p <= 1.0 or int(max_span) < 1:
            raise ValueError(f"need 0 < span_p <= 1 and max_span >= 1, got {span_p}, {max_span}")
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.strategy = strategy
        self.max_predictions = int(max_predictions)
        self.span_p = float(span_p)
        self.max_span = int(max_span)

        token_of_id = {i: t for t, i in tokenizer.vocab.items()}
        vocab_size = max(len(tokenizer), max(token_of_id) + 1)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        special = set(tokenizer.all_special_ids) | {
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
            tokenizer.mask_token_id,
        }
        self.is_special = np.zeros(vocab_size, dtype=bool)  # (V,)
        self.is_special[sorted(special)] = True
        self.ordinary_ids = np.flatnonzero(~self.is_special)  # where random replacements come from
        self.is_continuation = np.zeros(vocab_size, dtype=bool)  # (V,) "##" pieces
        for i, token in token_of_id.items():
            self.is_continuation[i] = token.startswith("##")
        self.is_salient = np.zeros(vocab_size, dtype=bool)  # (V,) entity tokens
        if strategy == "salient":
            if salient_ids is None or len(salient_ids) == 0:
                raise ValueError("strategy 'salient' needs salient_ids: the token ids of entities")
            self.is_salient[np.asarray(list(salient_ids), dtype=np.int64)] = True
        self.ends_sentence = np.zeros(vocab_size, dtype=bool)  # (V,) ".", "?", "!", [SEP]
        for token in (".", "?", "!"):
            if token in tokenizer.vocab:
                self.ends_sentence[tokenizer.vocab[token]] = True
        self.ends_sentence[tokenizer.sep_token_id] = True
        self.rng = np.random.Generator(np.random.PCG64(seed))

    # ---- the state of the random generator, for bit-for-bit resumption ----

    def state_dict(self) -> dict:
        """The generator's state as plain JSON-able Python (PCG64's ``bit_generator.state``)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        bit_state = state["bit_generator"]
        if bit_state.get("bit_generator") != "PCG64":
            raise ValueError(f"expected a PCG64 state, got {bit_state.get('bit_generator')!r}")
        self.rng.bit_generator.state = bit_state

    # ---- masking ----

    def __call__(self, input_ids, attention_mask=None) -> dict[str, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"input_ids must be a 2-D integer array (B, S), got {ids.dtype}{ids.shape}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.is_special)):
            raise ValueError(f"input_ids must lie in [0, {len(self.is_special)}), the vocabulary")
        ids = ids.astype(np.int64)  # (B, S), a copy
        if attention_mask is None:
            attention_mask = ids != self.pad_token_id
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {attention_mask.shape}, input_ids {ids.shape}"
            )
        attention_mask = attention_mask.astype(np.int64)  # (B, S)
        candidates = (attention_mask != 0) & ~self.is_special[ids]  # (B, S) may be selected

        if self.strategy == "token":
            selected = self.rng.random(ids.shape) < self.mlm_probability  # (B, S)
            selected &= candidates
            decision = self.rng.random(ids.shape)  # (B, S) one uniform per position
        elif self.strategy == "exact":
            selected = self._select_exact(candidates)
            decision = self.rng.random(ids.shape)
        elif self.strategy == "whole_word":
            word_of, n_words = self._words(ids, candidates)
            chosen = self.rng.random(n_words) < self.mlm_probability  # (W,)
            selected = candidates & chosen[word_of] if n_words else candidates
            decision = self.rng.random(ids.shape)
        elif self.strategy == "salient":
            selected = self._select_salient(ids, candidates)
            selected |= (self.rng.random(ids.shape) < self.mlm_probability) & candidates
            decision = self.rng.random(ids.shape)
        else:
            selected, span_of, n_spans = self._select_spans(ids, candidates)
            decision = self.rng.random(n_spans + 1)[span_of]  # (B, S) one uniform per span

        labels = np.where(selected, ids, -100)  # (B, S)
        to_mask = selected & (decision < self.mask_replace_prob)
        to_random = (
            selected
            & (decision >= self.mask_replace_prob)
            & (decision < self.mask_replace_prob + self.random_replace_prob)
        )
        masked = ids.copy()
        masked[to_mask] = self.mask_token_id
        picks = self.rng.integers(len(self.ordinary_ids), size=int(to_random.sum()))
        masked[to_random] = self.ordinary_ids[picks]
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

    def _select_exact(self, candidates: np.ndarray) -> np.ndarray:
        """k = min(max_predictions, max(1, round(p·n))) positions per row, uniformly."""
        n = candidates.sum(axis=1)  # (B,)
        k = np.minimum(self.max_predictions, np.maximum(1, np.round(self.mlm_probability * n)))
        k = np.where(n > 0, k, 0)  # (B,)
        keys = np.where(candidates, self.rng.random(candidates.shape), 2.0)  # (B, S)
        order = np.argsort(keys, axis=1, kind="stable")  # (B, S) candidates first, shuffled
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(candidates.shape[1])[None, :], axis=1)
        return rank < k[:, None]  # (B, S)

    def _select_salient(self, ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """One entity per sentence, uniformly among the sentence's entities: (B, S) bool."""
        B, S = ids.shape
        ends = self.ends_sentence[ids]  # (B, S)
        sentence = np.cumsum(ends, axis=1) - ends  # (B, S) an end belongs to its sentence
        sentence = (np.arange(B)[:, None] * (S + 1) + sentence).ravel()  # (B·S,) batch-wide
        keys = self.rng.random(B * S)  # (B·S,) a random order of the entities
        entities = np.flatnonzero((candidates & self.is_salient[ids]).ravel())  # (E,)
        order = entities[np.lexsort((keys[entities], sentence[entities]))]  # by sentence, key
        first = np.ones(len(order), dtype=bool)  # the first entity of each sentence in order
        first[1:] = sentence[order[1:]] != sentence[order[:-1]]
        selected = np.zeros(B * S, dtype=bool)
        selected[order[first]] = True
        return selected.reshape(B, S)

    def _words(self, ids: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, int]:
        """Number the words of the batch: a word is a token and the "##" pieces right after it.

        Returns ``word_of`` (B, S): the batch-wide index of each candidate's word (meaningless
        elsewhere), and the number of words.
        """
        continues = self.is_continuation[ids]  # (B, S)
        previous_is_candidate = np.zeros_like(candidates)
        previous_is_candidate[:, 1:] = candidates[:, :-1]
        starts = candidates & ~(continues & previous_is_candidate)  # (B, S)
        word_of = np.cumsum(starts.ravel()).reshape(ids.shape) - 1  # (B, S)
        return np.maximum(word_of, 0), int(starts.sum())

    def _select_spans(self, ids: np.ndarray, candidates: np.ndarray):
        """SpanBERT spans per row; returns selected (B, S), span index (B, S; 0 = none), count."""
        word_of, _ = self._words(ids, candidates)
        selected = np.zeros_like(candidates)
        span_of = np.zeros(ids.shape, dtype=np.int64)
        n_spans = 0
        for row in range(ids.shape[0]):
            positions = np.flatnonzero(candidates[row])  # token positions of this row's words
            if len(positions) == 0:
                continue
            # words of the row as runs of equal word_of: their first positions and lengths
            first = np.flatnonzero(np.diff(word_of[row, positions], prepend=-1))
            lengths = np.diff(np.append(first, len(positions)))
            budget = max(1, int(round(self.mlm_probability * len(positions))))
            for word, count in choose_spans(self.rng, lengths, budget, self.span_p, self.max_span):
                n_spans += 1
                tokens = positions[first[word] : first[word] + lengths[word : word + count].sum()]
                selected[row, tokens] = True
                span_of[row, tokens] = n_spans
        return selected, span_of, n_spans
