"""Fill in the [MASK]: ``python -m tinymlm.fill_mask --model DIR "Paris is the capital of [MASK]."``

The output follows Hugging Face's fill-mask pipeline: for each input with one [MASK], a list of
``{"score", "token", "token_str", "sequence"}`` dicts, best first; with k masks, a list of k
such lists (each mask predicted on its own, the others left masked). ``--json`` prints exactly
one JSON array with one element per input on stdout; progress and messages go to stderr.

A model knows only the words of its vocabulary: any other word is read as pieces (tinyworld's
model spells "continent" ``c ##o ##n ##t ...``) whose meaning it may never have learned. The
command names such words on stderr, one line per input, and ``--show-vocab`` prints the words
the model knows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.tokenizer import is_punctuation, special_token_pattern


def fill_mask(model, tokenizer, texts, top_k: int = 5, batch_size: int = 64) -> list:
    """Predictions for every [MASK] of every text (Hugging Face's output shape, see above)."""
    if isinstance(texts, str):
        texts = [texts]
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    mask_id = tokenizer.mask_token_id
    top_k = min(top_k, len(tokenizer))
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            enc = tokenizer(chunk, padding=True, truncation=True)
            ids = enc["input_ids"]  # (B, S)
            for text, row in zip(chunk, ids):
                if not (row == mask_id).any():
                    raise ValueError(f"no [MASK] in {text!r}: put [MASK] where a word should "
                                     "be predicted")
            with no_grad():
                logits = model(ids, enc["attention_mask"], enc["token_type_ids"]).logits.data
            logits = backend.to_numpy(logits).astype(np.float64)  # (B, S, V)
            for b, row in enumerate(ids):
                per_mask = [_candidates(tokenizer, row, pos, logits[b, pos], top_k)
                            for pos in np.flatnonzero(row == mask_id)]
                results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
    finally:
        model.train(was_training)
    return results


def _candidates(tokenizer, row, position, logits, top_k):
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()  # (V,)
    best = np.argsort(-probs, kind="stable")[:top_k]
    out = []
    for token in best:
        filled = row.copy()
        filled[position] = token
        out.append({
            "score": float(probs[token]),
            "token": int(token),
            "token_str": tokenizer.decode([int(token)]),
            "sequence": tokenizer.decode(filled[filled != tokenizer.pad_token_id].tolist(),
                                         skip_special_tokens=True),
        })
    return out


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of ``text`` that are not whole entries of the vocabulary, each once, in order.

    A word is what the basic tokenizer makes of the text (lowercased, punctuation split off);
    special tokens and punctuation are left aside.
    """
    words = []
    pattern = special_token_pattern(tokenizer.all_special_tokens)
    for segment in pattern.split(text)[::2]:  # the text between the special tokens
        words += tokenizer.basic_tokenizer.tokenize(segment)
    unknown = [w for w in words if w not in tokenizer.vocab and not all(map(is_punctuation, w))]
    return list(dict.fromkeys(unknown))


def known_words(tokenizer) -> list[str]:
    """The vocabulary's whole words, in id order: no special tokens, ##pieces or punctuation."""
    special = set(tokenizer.all_special_tokens)
    return [t for t in sorted(tokenizer.vocab, key=tokenizer.vocab.__getitem__)
            if t not in special and not t.startswith("##") and not all(map(is_punctuation, t))
            and not (t.startswith("[") and t.endswith("]"))]  # [unused0] ...


def warn_unknown_words(model_dir, tokenizer, texts) -> None:
    """One line on stderr for each input with words the model does not know whole."""
    for text in texts:
        unknown = unknown_words(tokenizer, text)
        if unknown:
            print(f"warning: {text!r} has words the model does not know, so it reads them in "
                  f"pieces it may not understand: {', '.join(unknown)} (python -m "
                  f"tinymlm.fill_mask --model {model_dir} --show-vocab lists the words it "
                  "knows)", file=sys.stderr)


def warn_beyond_trained_length(model_dir, tokenizer, texts) -> None:
    """A run folder records the sequence length it trained on; positions past it were never
    trained, so predictions for a longer input are unreliable: say so on stderr."""
    settings = Path(model_dir) / "train_config.json"
    try:
        trained = int(json.loads(settings.read_text())["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a tinymlm run folder (e.g. a Hugging Face model): nothing to check
    for text in texts:
        n = len(tokenizer.encode(text))
        if n > trained:
            print(f"warning: {text!r} is {n} tokens long, but the model was trained on "
                  f"sequences of at most {trained}: positions past {trained} were never "
                  "trained, so expect poor predictions", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinymlm.fill_mask",
                                     description="Predict the [MASK] tokens of some sentences.")
    parser.add_argument("--model", required=True, help="a model folder (a run folder works)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    parser.add_argument("--show-vocab", action="store_true",
                        help="print the words the model knows, one a line, and nothing else")
    parser.add_argument("texts", nargs="*",
                        help='sentences with [MASK], e.g. "The cat sat on the [MASK]."')
    args = parser.parse_args(argv)
    from tinymlm.checkpoint import CheckpointError
    from tinymlm.nn.bert import BertForMaskedLM
    from tinymlm.tokenizer import BertTokenizer

    try:
        if args.show_vocab:
            if args.texts:
                raise ValueError("--show-vocab prints the vocabulary and takes no sentences: "
                                 "run it on its own")
            print("\n".join(known_words(BertTokenizer.from_pretrained(args.model))))
            return 0
        if not args.texts:
            raise ValueError('give one or more sentences with [MASK], e.g. "The cat sat on '
                             'the [MASK]." (or --show-vocab to list the words the model knows)')
        if args.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
        for text in args.texts:
            if "[MASK]" not in text:
                raise ValueError(f"no [MASK] in {text!r}: put [MASK] where a word should be "
                                 "predicted")
        model = BertForMaskedLM.from_pretrained(args.model)
        tokenizer = BertTokenizer.from_pretrained(args.model)
        warn_unknown_words(args.model, tokenizer, args.texts)
        warn_beyond_trained_length(args.model, tokenizer, args.texts)
        results = fill_mask(model, tokenizer, args.texts, top_k=args.top_k)
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
        return 0
    for text, result in zip(args.texts, results):
        print(text)
        masks = [result] if result and isinstance(result[0], dict) else result
        for i, candidates in enumerate(masks):
            if len(masks) > 1:
                print(f"  [MASK] #{i + 1}")
            for c in candidates:
                print(f"    {c['score']:6.3f}  {c['token_str']:15s}  {c['sequence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
