"""Generate text: ``python -m tinymlm.generate --model DIR "The capital of France is"``.

What a model can do here depends on how it was trained:

- a causal model (``BertLMHeadModel``, ``python -m tinymlm.train --objective clm``) writes left
  to right, one token per forward pass: ``greedy`` takes the likeliest next token, ``sample``
  (the default) draws it from softmax(logits / ``--temperature``) over the ``--top-k`` likeliest;
  it stops at [SEP], the end of a training sequence, or after ``--max-new-tokens``.
- a masked language model was never trained to continue text, only to fill gaps. It fills
  ``--max-new-tokens`` [MASK]s appended to the prompt:
  ``mask-predict`` (the default; Ghazvininejad et al. 2019) predicts every mask at once, keeps
  the most confident tokens and re-masks the others, for ``--iterations`` rounds with the
  re-masked count falling linearly to 0;
  ``gibbs`` (Wang & Cho 2019: BERT as a Markov random field) fills the masks left to right,
  then for ``--iterations`` sweeps masks one position at a time, in random order, and draws a
  new token from the model's distribution given everything else.

``--json`` prints exactly one JSON array on stdout with one ``[{"generated_text": ...}]`` per
prompt (Hugging Face's text-generation shape: the prompt followed by what was generated).
Without it, one generated text per line. Random draws come from ``--seed``, so a command gives
the same text every time. Bad input ends with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from tinymlm import backend, cli
from tinymlm.autograd import no_grad
from tinymlm.errors import UsageError

COMMAND = "python -m tinymlm.generate"
CAUSAL_METHODS = ("greedy", "sample")
MLM_METHODS = ("mask-predict", "gibbs")
SAMPLING = ("sample", "gibbs")  # the methods that draw tokens: --temperature and --top-k
ITERATIVE = MLM_METHODS  # the methods that refine the whole span: --iterations


def generate(model, tokenizer, prompts, method: str | None = None, max_new_tokens: int = 8,
             temperature: float = 1.0, top_k: int = 50, iterations: int = 10,
             seed: int = 0) -> list[list[dict]]:
    """``[[{"generated_text": ...}], ...]``, one per prompt (what ``--json`` prints).

    ``method`` None: ``sample`` for a causal model, ``mask-predict`` for a masked one. ``top_k``
    0 draws from the whole vocabulary. Raises ValueError on a setting that cannot run.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    causal = bool(model.config.is_decoder)
    method = method or ("sample" if causal else "mask-predict")
    check_settings(causal, method, max_new_tokens, temperature, top_k, iterations)
    rng = np.random.default_rng(seed)  # one stream for every prompt, in order
    was_training = model.training
    model.eval()
    try:
        results = []
        for prompt in prompts:
            prompt_ids = encode_prompt(tokenizer, prompt, max_new_tokens,
                                       model.config.max_position_embeddings)
            if method in CAUSAL_METHODS:
                new = left_to_right(model, tokenizer, prompt_ids, max_new_tokens,
                                    method == "greedy", temperature, top_k, rng)
            elif method == "mask-predict":
                new = mask_predict(model, tokenizer, prompt_ids, max_new_tokens, iterations)
            else:
                new = gibbs(model, tokenizer, prompt_ids, max_new_tokens, iterations,
                            temperature, top_k, rng)
            results.append([{"generated_text": continuation(tokenizer, prompt, prompt_ids, new)}])
        return results
    finally:
        model.train(was_training)


def check_settings(causal: bool, method: str, max_new_tokens: int, temperature: float,
                   top_k: int, iterations: int) -> None:
    if method not in CAUSAL_METHODS + MLM_METHODS:
        raise ValueError(f"--method must be one of {list(CAUSAL_METHODS + MLM_METHODS)}, "
                         f"got {method!r}")
    if causal and method in MLM_METHODS:
        raise ValueError(f"{method} fills [MASK]s with a masked language model, and this model "
                         "is causal (left to right): use greedy or sample")
    if not causal and method in CAUSAL_METHODS:
        raise ValueError(f"{method} writes left to right and needs a causal model (python -m "
                         "tinymlm.train --objective clm); this one is a masked language model: "
                         "use mask-predict or gibbs")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"--temperature must be a positive number, got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k must be 0 (the whole vocabulary) or more, got {top_k}")
    if iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {iterations}")


def encode_prompt(tokenizer, prompt: str, max_new_tokens: int, max_positions: int) -> list[int]:
    """[CLS] + the prompt's tokens: the closing [SEP] is left off, since the text goes on."""
    if "[MASK]" in prompt:
        raise ValueError(f"{prompt!r} holds a [MASK]: generation appends its own; to fill the "
                         "masks of a sentence use python -m tinymlm.fill_mask")
    ids = tokenizer.encode(prompt)[:-1]
    if len(ids) + max_new_tokens + 1 > max_positions:  # + 1: the [SEP] after the masks
        raise ValueError(f"{prompt!r} is {len(ids)} tokens long: with {max_new_tokens} new "
                         f"tokens it passes the model's {max_positions} positions; shorten it "
                         "or ask for fewer tokens")
    return ids


def continuation(tokenizer, prompt: str, prompt_ids: list[int], new: list[int]) -> str:
    """The prompt as given, then the text of the new tokens (Hugging Face's rule: decode the
    whole sequence and cut the decoded prompt off its front, so "##" pieces join up)."""
    start = len(tokenizer.decode(prompt_ids, skip_special_tokens=True))
    return prompt + tokenizer.decode(prompt_ids + new, skip_special_tokens=True)[start:]


# --- the model's distributions -------------------------------------------------------------------


def logits_of(model, ids: list[int]) -> np.ndarray:
    """(S, V) float64 logits of one sequence, on the CPU."""
    with no_grad():
        logits = model(np.asarray([ids], dtype=np.int64)).logits.data[0]  # (S, V)
    return backend.to_numpy(logits).astype(np.float64)


def never_generated(tokenizer, vocab_size: int, allow_sep: bool) -> np.ndarray:
    """(V,) True for the tokens no method may write: [CLS], [PAD], [MASK], [UNK], and [SEP]
    unless it is the causal model's way of ending the text."""
    banned = np.zeros(vocab_size, dtype=bool)
    banned[tokenizer.all_special_ids] = True
    if allow_sep:
        banned[tokenizer.sep_token_id] = False
    return banned


def distribution(logits: np.ndarray, banned: np.ndarray, temperature: float,
                 top_k: int) -> np.ndarray:
    """(V,) softmax(logits / temperature) over the top_k likeliest allowed tokens, 0 elsewhere."""
    z = np.where(banned, -np.inf, logits / temperature)  # (V,)
    if 0 < top_k < int((~banned).sum()):
        kth = np.partition(z, -top_k)[-top_k]  # the k-th largest score
        z = np.where(z >= kth, z, -np.inf)  # (ties at the k-th may keep a few more)
    p = np.exp(z - z.max())
    return p / p.sum()


# --- the methods ---------------------------------------------------------------------------------


def left_to_right(model, tokenizer, ids, max_new_tokens, greedy, temperature, top_k, rng):
    """A causal model's continuation: one forward pass per new token, stopping at [SEP]."""
    banned = never_generated(tokenizer, model.config.vocab_size, allow_sep=True)
    new: list[int] = []
    for _ in range(max_new_tokens):
        last = logits_of(model, ids + new)[-1]  # (V,) the next token's scores
        if greedy:
            token = int(np.argmax(np.where(banned, -np.inf, last)))
        else:
            token = int(rng.choice(len(last), p=distribution(last, banned, temperature, top_k)))
        if token == tokenizer.sep_token_id:  # the end of a training sequence
            break
        new.append(token)
    return new


def mask_predict(model, tokenizer, ids, n, iterations):
    """Mask-predict: all n masks predicted at once, then ``iterations`` - 1 rounds that re-mask
    the n·(T - t)/T least confident tokens (T iterations, t = 1, 2, ...) and predict them again.
    A token's confidence is its probability when it was last predicted. Deterministic."""
    banned = never_generated(tokenizer, model.config.vocab_size, allow_sep=False)
    start, mask_id = len(ids), tokenizer.mask_token_id
    seq = np.array(ids + [mask_id] * n + [tokenizer.sep_token_id])  # (S,)
    confidence = np.zeros(n)  # (n,)
    masked = np.arange(n)  # the span positions predicted this round
    for t in range(iterations):
        logits = logits_of(model, seq.tolist())[start:start + n]  # (n, V)
        z = np.where(banned, -np.inf, logits)
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)  # (n, V)
        best = p[masked].argmax(axis=-1)  # (m,)
        seq[start + masked] = best
        confidence[masked] = p[masked, best]
        remask = n * (iterations - 1 - t) // iterations  # linear decay to 0 at the last round
        if remask == 0:
            break
        masked = np.argsort(confidence, kind="stable")[:remask]  # the least confident
        seq[start + masked] = mask_id
    return seq[start:start + n].tolist()


def gibbs(model, tokenizer, ids, n, iterations, temperature, top_k, rng):
    """Gibbs sampling: fill the n masks left to right (each drawn given the tokens to its left,
    the masks to its right), then ``iterations`` sweeps; a sweep visits every position once in
    random order, masks it and draws it again given all the others."""
    banned = never_generated(tokenizer, model.config.vocab_size, allow_sep=False)
    start, mask_id = len(ids), tokenizer.mask_token_id
    seq = ids + [mask_id] * n + [tokenizer.sep_token_id]

    def redraw(position: int) -> None:
        seq[position] = mask_id
        scores = logits_of(model, seq)[position]  # (V,)
        seq[position] = int(rng.choice(len(scores), p=distribution(scores, banned, temperature,
                                                                     top_k)))

    for i in range(n):
        redraw(start + i)
    for _ in range(iterations):
        for i in rng.permutation(n):
            redraw(start + int(i))
    return seq[start:start + n]


# --- the command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other bad input
        raise UsageError(f"{message} (see {COMMAND} --help)")


def parse_args(argv) -> argparse.Namespace:
    p = _Parser(prog=COMMAND, description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model folder (a run folder works)")
    p.add_argument("--method", choices=CAUSAL_METHODS + MLM_METHODS, default=None,
                   help="default: sample for a causal model, mask-predict for a masked one")
    p.add_argument("--max-new-tokens", type=int, default=8, help="default 8")
    p.add_argument("--temperature", type=float, default=None,
                   help="sample and gibbs: divide the logits by T (default 1.0)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample and gibbs: draw from the K likeliest tokens, 0 = all (default 50)")
    p.add_argument("--iterations", type=int, default=None,
                   help="mask-predict: rounds; gibbs: sweeps after the first fill (default 10)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    p.add_argument("prompts", nargs="+", help='texts to continue, e.g. "The capital of France is"')
    return p.parse_args(argv)


def load(folder: str, device: str):
    """The model in ``folder`` (causal if its config says is_decoder) and its tokenizer."""
    from tinymlm.checkpoint import CheckpointError, read_config
    from tinymlm.nn.bert import BertForMaskedLM
    from tinymlm.nn.causal import BertLMHeadModel
    from tinymlm.tokenizer import BertTokenizer

    if not Path(folder).is_dir():
        raise UsageError(f"--model {folder}: no such folder; give a model folder (a run folder "
                         "of python -m tinymlm.train works)")
    try:
        cls = BertLMHeadModel if read_config(folder).is_decoder else BertForMaskedLM
        model = cls.from_pretrained(folder, device=device)
        tokenizer = BertTokenizer.from_pretrained(folder)
    except (CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"--model {folder}: {e}") from e
    return model, tokenizer


def warn_beyond_trained_length(folder: str, tokenizer, prompts, max_new_tokens: int) -> None:
    """A run folder records the sequence length it trained on; positions past it were never
    trained, so text written there is unreliable: say so on stderr."""
    try:
        trained = int(json.loads((Path(folder) / "train_config.json").read_text())["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a tinymlm run folder (e.g. a Hugging Face model): nothing to check
    for prompt in prompts:
        n = len(tokenizer.encode(prompt)) + max_new_tokens
        if n > trained:
            cli.log(f"warning: {prompt!r} with {max_new_tokens} new tokens needs {n} positions, "
                    f"but the model was trained on sequences of at most {trained}: expect poor "
                    "text past that")


def run(argv) -> None:
    args = parse_args(argv)
    device = cli.check_device(args.device)
    model, tokenizer = load(args.model, device)
    method = args.method or ("sample" if model.config.is_decoder else "mask-predict")
    for name, methods in (("temperature", SAMPLING), ("top_k", SAMPLING),
                          ("iterations", ITERATIVE)):
        if getattr(args, name) is not None and method not in methods:
            raise UsageError(f"--{name.replace('_', '-')} is a setting of --method "
                             f"{' or '.join(methods)}, not {method}")
    settings = dict(temperature=1.0 if args.temperature is None else args.temperature,
                    top_k=50 if args.top_k is None else args.top_k,
                    iterations=10 if args.iterations is None else args.iterations)
    try:
        results = generate(model, tokenizer, args.prompts, method=method,
                           max_new_tokens=args.max_new_tokens, seed=args.seed, **settings)
    except ValueError as e:
        raise UsageError(f"{e} (see {COMMAND} --help)") from e
    warn_beyond_trained_length(args.model, tokenizer, args.prompts, args.max_new_tokens)
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        for result in results:
            print(result[0]["generated_text"])


def main(argv=None) -> int:
    return cli.run_command(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
