"""The downstream tasks (issue 8): tinyworld-generated tasks and JSON-lines user data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tinymlm.data import tasks, tinyworld
from tinymlm.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.from_vocab(tinyworld.vocabulary())


@pytest.fixture(scope="module")
def built():
    return {name: tasks.builtin_task(name, seed=0) for name in tasks.BUILTIN_TASKS}


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def heldout_names(seed=0) -> set[str]:
    """Country, capital and animal words of the held-out subjects (derived from the tables)."""
    held = tasks.heldout_subjects(seed)
    names = {w for c, cap, *_ in tinyworld.COUNTRIES if c in held for w in (c, cap)}
    return names | {w for a, pl, *_ in tinyworld.ANIMALS if a in held for w in (a, pl)}


def test_generation_is_deterministic_under_a_seed():
    for name in tasks.BUILTIN_TASKS:
        a, b = tasks.builtin_task(name, seed=3), tasks.builtin_task(name, seed=3)
        assert a.train == b.train and a.eval == b.eval, name
        assert tasks.builtin_task(name, seed=4).train != a.train, name


def test_heldout_subjects_are_a_fifth_of_each_table():
    held = tasks.heldout_subjects(0)
    for rows in (tinyworld.COUNTRIES, tinyworld.ANIMALS, tinyworld.THINGS):
        n = sum(r[0] in held for r in rows)
        assert n == max(1, round(0.2 * len(rows)))


def test_verify_true_statements_are_facts_and_false_ones_are_not(built):
    task = built["verify"]
    facts = {
        p.text.replace(tinyworld.MASK, p.answer).lower()
        for split in ("train", "heldout")
        for p in tinyworld.fact_probes(split)
    }
    for example in task.train + task.eval:
        assert (example["text"].lower() in facts) == (example["label"] == "true"), example
    for part in (task.train, task.eval):
        labels = [e["label"] for e in part]
        assert abs(labels.count("true") - labels.count("false")) <= 1


def test_verify_holds_out_facts(built):
    task, hidden = built["verify"], heldout_names()
    assert not any(words_of(e["text"]) & hidden for e in task.train)
    held = tasks.heldout_subjects(0)
    held_things = [t for t, *_ in tinyworld.THINGS if t in held]
    assert all(
        words_of(e["text"]) & hidden or any(t in e["text"].lower() for t in held_things)
        for e in task.eval
    )


def test_verify_objects_are_no_cue_in_training(built):
    """Each object word is as often in a true as in a false training statement, roughly."""
    task = built["verify"]
    counts = {}
    for e in task.train:
        for w in words_of(e["text"]):
            t, f = counts.get(w, (0, 0))
            counts[w] = (t + (e["label"] == "true"), f + (e["label"] == "false"))
    capitals = [r[1] for r in tinyworld.COUNTRIES if r[1] in counts]
    skew = [abs(t - f) / (t + f) for t, f in (counts[c] for c in capitals) if t + f >= 20]
    assert skew and np.mean(skew) < 0.35


def test_entity_tags_follow_the_tables(built, tok):
    task = built["entities"]
    kinds = {
        "COUNTRY": {r[0] for r in tinyworld.COUNTRIES},
        "CITY": {r[1] for r in tinyworld.COUNTRIES},
        "ANIMAL": {r[0] for r in tinyworld.ANIMALS} | {r[1] for r in tinyworld.ANIMALS},
        "COLOR": {r[2] for r in tinyworld.THINGS},
    }
    seen = set()
    for example in task.train + task.eval:
        for word, tag in zip(example["tokens"], example["tags"], strict=True):
            expected = next((k for k, ws in kinds.items() if word.lower() in ws), "O")
            assert tag == expected, (word, tag)
            if tag != "O":
                assert tok.tokenize(word) == [word.lower()]  # one token per entity
                seen.add(tag)
    assert seen == set(kinds)


def test_entities_eval_names_unseen_entities_in_heldout_phrasings(built):
    task, hidden = built["entities"], heldout_names()
    train_sentences = {" ".join(e["tokens"]) for e in task.train}
    assert not any({w.lower() for w in e["tokens"]} & hidden for e in task.train)
    assert sum(bool({w.lower() for w in e["tokens"]} & hidden) for e in task.eval) > 50
    assert not train_sentences & {" ".join(e["tokens"]) for e in task.eval}


def test_qa_answers_are_spans_and_eval_questions_are_new_phrasings(built, tok):
    task = built["qa"]
    for e in task.train + task.eval:
        assert e["context"][e["answer_start"] :][: len(e["answer"])] == e["answer"]
        assert 2 <= len(re.findall(r"[.?!](?= |$)", e["context"])) <= 8
    train_q = {e["question"] for e in task.train}
    assert not train_q & {e["question"] for e in task.eval}
    arrays = tasks.encode(task, task.eval[:50], tok, max_length=64)
    for b, e in enumerate(task.eval[:50]):
        s, t = arrays["start_positions"][b], arrays["end_positions"][b]
        assert arrays["token_type_ids"][b, s] == 1  # in the context
        assert tok.decode(arrays["input_ids"][b, s : t + 1]) == e["answer"].lower()


# --- encoding --------------------------------------------------------------------------------


def test_tagging_labels_sit_on_first_subtokens(tok):
    task = tasks.Task("t", "tagging", [], [], labels=["O", "X"])
    example = {"tokens": ["Paris", "xq", "is"], "tags": ["X", "X", "O"]}
    arrays = tasks.encode(task, [example], tok, max_length=16)
    pieces = [tok.tokenize(w) for w in example["tokens"]]
    assert [len(p) for p in pieces] == [1, 2, 1]
    assert arrays["labels"][0].tolist() == [-100, 1, 1, -100, 0, -100]
    assert tok.convert_ids_to_tokens(arrays["input_ids"][0].tolist()) == [
        "[CLS]",
        "paris",
        "x",
        "##q",
        "is",
        "[SEP]",
    ]


def test_classification_pairs_get_token_types(tok):
    task = tasks.Task("t", "classification", [], [], labels=["0", "1"])
    examples = [
        {"text": "the cat", "text_pair": "a dog", "label": 1},
        {"text": "snow is white", "text_pair": "milk", "label": 0},
    ]
    arrays = tasks.encode(task, examples, tok, max_length=16)
    assert arrays["labels"].tolist() == [1, 0]
    assert arrays["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]  # [CLS] a [SEP] b [SEP]
    assert arrays["attention_mask"][0].tolist() == [1] * 7


def test_qa_answer_cut_off_by_truncation_points_at_cls(tok):
    context = "The capital of France is Paris. " * 6 + "Rome is in Italy."
    example = {
        "question": "Where is Rome?",
        "context": context,
        "answer": "Italy",
        "answer_start": context.index("Italy"),
    }
    task = tasks.Task("t", "qa", [], [])
    arrays = tasks.encode(task, [example], tok, max_length=24)
    assert arrays["input_ids"].shape == (1, 24)
    assert arrays["start_positions"][0] == arrays["end_positions"][0] == 0


# --- JSON lines --------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "rows, task_type",
    [
        ([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}], "classification"),
        ([{"tokens": ["a", "b"], "tags": ["O", "B-X"]}], "tagging"),
        ([{"question": "q?", "context": "it is here", "answer": "here", "answer_start": 6}], "qa"),
    ],
)
def test_jsonl_loads_and_guesses_the_task_type(tmp_path, rows, task_type):
    examples, guessed = tasks.load_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))
    assert examples == rows and guessed == task_type


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"d.jsonl:2 is not valid JSON"),
        ('{"text": "x"}', "needs \\['label'\\]"),
        ('{"tokens": ["a"], "tags": ["O", "O"]}', "1 tokens but 2 tags"),
        (
            '{"question": "q", "context": "abc", "answer": "b", "answer_start": 0}',
            "not at character",
        ),
        ('{"foo": 1}', "cannot tell the task type"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n' + line + "\n" if "not json" in line else line)
    with pytest.raises(ValueError, match=message):
        tasks.load_jsonl(path)


def test_user_task_splits_and_orders_labels(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 3 * 5} for i in range(30)]
    task = tasks.user_task(write_jsonl(tmp_path / "d.jsonl", rows), seed=1)
    assert task.labels == ["0", "5", "10"]  # numbers in numeric order
    assert len(task.eval) == 3 and len(task.train) == 27
    assert sorted(map(json.dumps, task.train + task.eval)) == sorted(map(json.dumps, rows))
    with pytest.raises(FileNotFoundError):
        tasks.user_task(tmp_path / "missing.jsonl")
    evaluation = write_jsonl(tmp_path / "e.jsonl", [{"text": "x", "label": 7}])
    with pytest.raises(ValueError, match="never do"):
        tasks.user_task(tmp_path / "d.jsonl", eval_path=evaluation)
