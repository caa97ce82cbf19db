"""Downstream tasks for fine-tuning: three built from tinyworld's facts, and your own data.

The built-in tasks need no download. Each is the same for the same seed, and its evaluation
part asks about something training never showed, so a good score means the model
generalises:

* ``verify`` (sequence classification, labels ``false`` / ``true``): a statement of a fact,
  or the same statement with its object swapped for another entity of the same kind
  ("Tokyo is the capital of Peru."). A fifth of the countries, animals and things are held
  out: their facts appear only in evaluation, so only a model that knew them before
  fine-tuning (from pretraining) can tell true from false there.
* ``entities`` (token classification, tags ``O COUNTRY CITY ANIMAL COLOR``): the kind of every
  word of tinyworld sentences. Evaluation uses held-out phrasings, and its held-out
  entities (the same fifth) never appear in a training sentence.
* ``qa`` (extractive question answering): a passage of 2-4 fact sentences and a question
  about one of them ("What is the capital of Japan?"); the answer is a span of the passage.
  Evaluation asks in question phrasings training never used.

Every entity is one word of ``tinyworld.vocabulary()``, so the tinyworld tokenizer
(``BertTokenizer.from_vocab(tinyworld.vocabulary())``) keeps it one token.

Your own data: JSON lines, one example per line (UTF-8), read by :func:`load_jsonl`::

    classification  {"text": "a film to love", "label": "positive"}
                    {"text": "A man sleeps.", "text_pair": "A person rests.", "label": 1}
    tagging         {"tokens": ["Paris", "is", "in", "France"],
                     "tags": ["B-LOC", "O", "O", "B-LOC"]}
    qa              {"question": "Where is Paris?", "context": "Paris is in France.",
                     "answer": "France", "answer_start": 12}

Labels and tags may be strings or integers; the label set is what the training file uses.
``answer_start`` is the character offset of ``answer`` in ``context`` (SQuAD's convention);
an answer should start and end at word boundaries. Tags with ``B-``/``I-`` prefixes are
read as BIO spans when entity F1 is computed; plain tags make one entity per run of the
same tag.

:func:`encode` turns examples into the arrays a head takes (int64, (N, S), right-padded).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinymlm.data import tinyworld

TASK_TYPES = ("classification", "tagging", "qa")
BUILTIN_TASKS = {"verify": "classification", "entities": "tagging", "qa": "qa"}
ENTITY_TAGS = ["O", "COUNTRY", "CITY", "ANIMAL", "COLOR"]
HELDOUT_FRACTION = 0.2
IGNORE = -100  # the label of a position that is not scored (Hugging Face's convention)
_PROPER = {w for row in tinyworld.COUNTRIES for w in row} | {"americas"}  # written capitalised


@dataclass
class Task:
    """A task's examples (dicts in the JSON-lines format) and its label names."""

    name: str
    task_type: str  # one of TASK_TYPES
    train: list[dict]
    eval: list[dict]
    labels: list[str] = field(default_factory=list)  # id -> name; empty for qa


# --- held-out entities -----------------------------------------------------------------------


def heldout_subjects(seed: int = 0) -> set[str]:
    """A fifth of the countries, animals and things (at least one of each), chosen by seed."""
    rng = np.random.default_rng([seed, 8])
    chosen = set()
    for names in (
        [r[0] for r in tinyworld.COUNTRIES],
        [r[0] for r in tinyworld.ANIMALS],
        [r[0] for r in tinyworld.THINGS],
    ):
        k = max(1, round(HELDOUT_FRACTION * len(names)))
        chosen.update(names[i] for i in rng.choice(len(names), k, replace=False))
    return chosen


def _heldout_words(heldout: set[str]) -> set[str]:
    """Every word that names a held-out entity: countries with their capitals, animals with
    their plurals (things are several words and are named by their subject only)."""
    words = set()
    for country, capital, *_ in tinyworld.COUNTRIES:
        if country in heldout:
            words |= {country, capital}
    for animal, plural, *_ in tinyworld.ANIMALS:
        if animal in heldout:
            words |= {animal, plural}
    return words


def _subject_row(subject: str) -> tuple[str, tuple]:
    for table, rows in (
        ("country", tinyworld.COUNTRIES),
        ("animal", tinyworld.ANIMALS),
        ("thing", tinyworld.THINGS),
    ):
        for row in rows:
            if subject in row[:2]:
                return table, row
    raise KeyError(subject)


def _owner(probe: tinyworld.Probe) -> str:
    """The table row a probe is about, named by its first column (country, animal, thing)."""
    return _subject_row(probe.subject)[1][0]


def _fill(probe: tinyworld.Probe, word: str) -> tuple[str, int]:
    """The probe's sentence with ``word`` in place of [MASK], and the word's character offset.

    Names are capitalised (as tinyworld writes them) and so is a word that opens the sentence.
    """
    at = probe.text.index(tinyworld.MASK)
    if word in _PROPER or at == 0:
        word = word.capitalize()
    return probe.text[:at] + word + probe.text[at + len(tinyworld.MASK) :], at


# --- verify: true or corrupted statements ----------------------------------------------------


def make_verify(seed: int = 0, n_train: int = 2000, n_eval: int = 400) -> Task:
    """Statements of facts (label ``true``) and corrupted copies (``false``), half and half.

    A corrupted statement swaps the object for another value of the same relation, drawn from
    facts of the same side of the split, so that an object seen in training is true and false
    equally often and word counting alone predicts nothing.
    """
    rng = np.random.default_rng([seed, 1])
    heldout = heldout_subjects(seed)
    train_probes = [p for p in tinyworld.fact_probes("train") if _owner(p) not in heldout]
    eval_probes = [
        p
        for p in tinyworld.fact_probes("train") + tinyworld.fact_probes("heldout")
        if _owner(p) in heldout
    ]

    def statements(probes, n):
        values: dict[str, set] = {}
        for p in probes:
            values.setdefault(p.relation, set()).add(p.answer)
        examples = []
        for i in rng.permutation(len(probes))[: (n + 1) // 2]:
            probe = probes[i]
            others = sorted(values[probe.relation] - {probe.answer}) or sorted(
                {q.answer for q in tinyworld.fact_probes("train") if q.relation == probe.relation}
                - {probe.answer}
            )
            wrong = others[int(rng.integers(len(others)))]
            examples.append({"text": _fill(probe, probe.answer)[0], "label": "true"})
            examples.append({"text": _fill(probe, wrong)[0], "label": "false"})
        order = rng.permutation(len(examples))
        return [examples[i] for i in order][:n]

    return Task(
        "verify",
        "classification",
        statements(train_probes, n_train),
        statements(eval_probes, n_eval),
        labels=["false", "true"],
    )


# --- entities: the kind of every word ---------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def entity_tag(word: str) -> str:
    """COUNTRY, CITY (the capitals), ANIMAL (singular or plural), COLOR, or O."""
    w = word.lower()
    if w in {r[0] for r in tinyworld.COUNTRIES}:
        return "COUNTRY"
    if w in {r[1] for r in tinyworld.COUNTRIES}:
        return "CITY"
    if w in {r[0] for r in tinyworld.ANIMALS} | {r[1] for r in tinyworld.ANIMALS}:
        return "ANIMAL"
    if w in {r[2] for r in tinyworld.THINGS}:
        return "COLOR"
    return "O"


def _sentences(n_docs: int, seed: int, split: str) -> list[str]:
    seen, out = set(), []
    for document in tinyworld.generate_documents(n_docs, seed=seed, split=split):
        for sentence in _SENTENCE_END.split(document):
            if sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


def make_entities(seed: int = 0, n_train: int = 1500, n_eval: int = 300) -> Task:
    """Tagged tinyworld sentences. Training: training phrasings naming no held-out entity.
    Evaluation: held-out phrasings naming a held-out entity or a color (colors are few and
    not held out)."""
    rng = np.random.default_rng([seed, 2])
    hidden = _heldout_words(heldout_subjects(seed))
    colors = {r[2] for r in tinyworld.THINGS}

    def tagged(sentences, keep, n):
        examples = []
        for sentence in sentences:
            words = _WORD.findall(sentence)
            if keep({w.lower() for w in words}):
                examples.append({"tokens": words, "tags": [entity_tag(w) for w in words]})
        return [examples[i] for i in rng.permutation(len(examples))[:n]]

    train_sentences = _sentences(4000, seed, "train")
    seen = set(train_sentences)  # scenes and fillers are in both splits: never in evaluation
    train = tagged(train_sentences, lambda words: not words & hidden, n_train)
    evaluation = tagged(
        [s for s in _sentences(4000, seed + 1, "eval") if s not in seen],
        lambda words: bool(words & (hidden | colors)),
        n_eval,
    )
    return Task("entities", "tagging", train, evaluation, labels=list(ENTITY_TAGS))


# --- qa: a question over a short passage ------------------------------------------------------

# relation -> (training question phrasings, held-out question phrasings)
QUESTIONS = {
    "capital": (
        ["What is the capital of {country}?", "Which city is the capital of {country}?"],
        ["Name the capital city of {country}."],
    ),
    "capital_of": (
        [
            "{capital} is the capital of which country?",
            "Which country has {capital} as its capital?",
        ],
        ["In which country is the city of {capital}?"],
    ),
    "language": (
        ["What language do people speak in {country}?", "What is the language of {country}?"],
        ["Which language is spoken in {country}?"],
    ),
    "region": (
        ["Where is {country}?", "In which part of the world is {country}?"],
        ["Where can you find {country}?"],
    ),
    "sound": (
        ["What does the {animal} say?", "What is the sound of the {animal}?"],
        ["What noise does a {animal} make?"],
    ),
    "food": (
        ["What does the {animal} eat?", "What is the food of the {animal}?"],
        ["What is the favorite food of the {animal}?"],
    ),
    "home": (
        ["Where does the {animal} live?", "What is the home of the {animal}?"],
        ["Where does the {animal} sleep at night?"],
    ),
    "color": (
        ["What color {be} {thing}?", "What is the color of {thing}?"],
        ["Which color {be} {thing}?"],
    ),
}


def _question(template: str, probe: tinyworld.Probe) -> str:
    table, row = _subject_row(probe.subject)
    slots = (
        {"country": row[0].capitalize(), "capital": row[1].capitalize()}
        if (table == "country")
        else {"animal": row[0]}
        if table == "animal"
        else {"thing": row[0], "be": row[1]}
    )
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def make_qa(seed: int = 0, n_train: int = 1500, n_eval: int = 300) -> Task:
    """Passages of 2-4 fact sentences about different subjects (the answer's sentence among
    them) with a question about one; training and evaluation use different question phrasings
    (the passages come from the same facts)."""
    rng = np.random.default_rng([seed, 3])
    probes = [p for p in tinyworld.fact_probes("train") if p.relation in QUESTIONS]

    def examples(split: int, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            target = probes[int(rng.integers(len(probes)))]
            others = [
                probes[i]
                for i in rng.choice(len(probes), 6, replace=False)
                if probes[i].subject != target.subject
            ][: int(rng.integers(1, 4))]
            sentences = [_fill(p, p.answer) for p in others]
            where = int(rng.integers(len(sentences) + 1))
            sentences.insert(where, _fill(target, target.answer))
            offset = sum(len(s) + 1 for s, _ in sentences[:where])
            text, at = sentences[where]
            phrasings = QUESTIONS[target.relation][split]
            question = _question(phrasings[int(rng.integers(len(phrasings)))], target)
            context = " ".join(s for s, _ in sentences)
            answer = text[at : at + len(target.answer)]
            out.append(
                {
                    "question": question,
                    "context": context,
                    "answer": answer,
                    "answer_start": offset + at,
                }
            )
        return out

    return Task("qa", "qa", examples(0, n_train), examples(1, n_eval))


def builtin_task(name: str, seed: int = 0) -> Task:
    makers = {"verify": make_verify, "entities": make_entities, "qa": make_qa}
    if name not in makers:
        raise ValueError(f"unknown task {name!r}: use one of {list(makers)} or a .jsonl file")
    return makers[name](seed)


# --- your own data: JSON lines ----------------------------------------------------------------

_REQUIRED = {
    "classification": ("text", "label"),
    "tagging": ("tokens", "tags"),
    "qa": ("question", "context", "answer", "answer_start"),
}


def guess_task_type(example: dict) -> str:
    for task_type, keys in (
        ("tagging", ("tokens",)),
        ("qa", ("question",)),
        ("classification", ("text",)),
    ):
        if all(k in example for k in keys):
            return task_type
    raise ValueError(
        f"cannot tell the task type from the keys {sorted(example)}: give "
        "--task-type classification|tagging|qa (see tinymlm.data.tasks)"
    )


def load_jsonl(path, task_type: str | None = None) -> tuple[list[dict], str]:
    """Read and check a JSON-lines file; returns its examples and the task type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a JSON-lines file of examples")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number} is not valid JSON ({e.msg})") from None
        if not isinstance(example, dict):
            raise ValueError(f"{path}:{number} is not a JSON object")
        task_type = task_type or guess_task_type(example)
        _check_example(example, task_type, f"{path}:{number}")
        examples.append(example)
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples, task_type


def _check_example(example: dict, task_type: str, where: str) -> None:
    if task_type not in _REQUIRED:
        raise ValueError(f"task type {task_type!r} is unknown: use one of {list(TASK_TYPES)}")
    missing = [k for k in _REQUIRED[task_type] if k not in example]
    if missing:
        raise ValueError(
            f"{where}: a {task_type} example needs {missing} "
            f"(it has {sorted(example)}); see the format in tinymlm.data.tasks"
        )
    if task_type == "tagging" and len(example["tokens"]) != len(example["tags"]):
        raise ValueError(
            f"{where}: {len(example['tokens'])} tokens but {len(example['tags'])} tags"
        )
    if task_type == "qa":
        start, answer = example["answer_start"], example["answer"]
        if not isinstance(start, int) or example["context"][start : start + len(answer)] != answer:
            raise ValueError(
                f"{where}: the answer {answer!r} is not at character {start} of the context"
            )


def label_names(examples: list[dict], task_type: str) -> list[str]:
    """The sorted label set of the training examples (numbers in numeric order), as strings."""
    if task_type == "qa":
        return []
    key, many = ("tags", True) if task_type == "tagging" else ("label", False)
    values = {v for e in examples for v in (e[key] if many else [e[key]])}
    numbers = all(isinstance(v, int) for v in values)
    return [str(v) for v in sorted(values, key=(None if numbers else str))]


def user_task(
    path, task_type: str | None = None, eval_path=None, seed: int = 0, eval_fraction: float = 0.1
) -> Task:
    """A task from your JSON-lines file; evaluation is ``eval_path`` or a seeded tenth."""
    examples, task_type = load_jsonl(path, task_type)
    if eval_path is not None:
        train, (evaluation, _) = examples, load_jsonl(eval_path, task_type)
    else:
        if len(examples) < 2:
            raise ValueError(f"{path} needs at least 2 examples to hold some out for evaluation")
        order = np.random.default_rng([seed, 4]).permutation(len(examples))
        n_eval = max(1, round(eval_fraction * len(examples)))
        evaluation = [examples[i] for i in order[:n_eval]]
        train = [examples[i] for i in order[n_eval:]]
    labels = label_names(train, task_type)
    unknown = set(label_names(evaluation, task_type)) - set(labels)
    if unknown:
        raise ValueError(
            f"the evaluation examples use labels the training ones never do: {sorted(unknown)}"
        )
    return Task(Path(path).stem, task_type, train, evaluation, labels)


# --- examples -> arrays -----------------------------------------------------------------------


def _pad(rows: list[list[int]], value: int) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)  # (N, S)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def encode(task: Task, examples: list[dict], tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Arrays for a head: input_ids, attention_mask, token_type_ids, and the targets
    (``labels``, or ``start_positions``/``end_positions``), right-padded to the longest row."""
    label2id = {name: i for i, name in enumerate(task.labels)}
    if task.task_type == "classification":
        texts = [e["text"] for e in examples]
        pairs = [e.get("text_pair") for e in examples]
        has_pairs = any(p is not None for p in pairs)
        batch = tokenizer(
            texts,
            [p or "" for p in pairs] if has_pairs else None,
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        batch["labels"] = np.array([label2id[str(e["label"])] for e in examples], dtype=np.int64)
        return batch
    if task.task_type == "tagging":
        return _encode_tagging(examples, tokenizer, max_length, label2id)
    return _encode_qa(examples, tokenizer, max_length)


def _encode_tagging(examples, tokenizer, max_length, label2id) -> dict[str, np.ndarray]:
    """Each word's label on its first sub-token; later sub-tokens and specials get -100."""
    ids, labels = [], []
    for e in examples:
        row, row_labels = [tokenizer.cls_token_id], [IGNORE]
        for word, tag in zip(e["tokens"], e["tags"], strict=True):
            pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(str(word))) or [
                tokenizer.unk_token_id
            ]
            row += pieces
            row_labels += [label2id[str(tag)]] + [IGNORE] * (len(pieces) - 1)
        row, row_labels = row[: max_length - 1], row_labels[: max_length - 1]
        ids.append(row + [tokenizer.sep_token_id])
        labels.append(row_labels + [IGNORE])
    input_ids = _pad(ids, tokenizer.pad_token_id)
    mask = (_pad([[1] * len(r) for r in ids], 0)).astype(np.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(input_ids),
        "labels": _pad(labels, IGNORE),
    }


def qa_tokens(example: dict, tokenizer) -> tuple[list[int], list[int], int, int]:
    """Question ids, context ids, and the answer's first and last index in the context ids.

    The context is tokenized in three pieces (before, answer, after): at word boundaries this
    gives the same tokens as the whole, and the answer's tokens are known without offsets.
    """
    context, start = example["context"], example["answer_start"]
    end = start + len(example["answer"])
    pieces = [
        tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        for text in (context[:start], context[start:end], context[end:])
    ]
    question = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example["question"]))
    first = len(pieces[0])
    return question, pieces[0] + pieces[1] + pieces[2], first, first + len(pieces[1]) - 1


def _encode_qa(examples, tokenizer, max_length) -> dict[str, np.ndarray]:
    """[CLS] question [SEP] context [SEP]; the context is cut to fit max_length. An answer cut
    away points at [CLS] (position 0), as Hugging Face's run_qa does."""
    ids, types, starts, ends = [], [], [], []
    for e in examples:
        question, context, first, last = qa_tokens(e, tokenizer)
        question = question[: max(1, max_length // 2 - 2)]
        context = context[: max(0, max_length - len(question) - 3)]
        offset = len(question) + 2
        inside = last < len(context)
        starts.append(offset + first if inside else 0)
        ends.append(offset + last if inside else 0)
        ids.append(
            [
                tokenizer.cls_token_id,
                *question,
                tokenizer.sep_token_id,
                *context,
                tokenizer.sep_token_id,
            ]
        )
        types.append([0] * offset + [1] * (len(context) + 1))
    input_ids = _pad(ids, tokenizer.pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": _pad([[1] * len(r) for r in ids], 0),
        "token_type_ids": _pad(types, 0),
        "start_positions": np.array(starts, dtype=np.int64),
        "end_positions": np.array(ends, dtype=np.int64),
    }
