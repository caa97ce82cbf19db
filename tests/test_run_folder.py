"""A failed start leaves nothing behind, and a retry of it just works (issue 24).

The corpus and every option are checked before the run folder is made; a run folder that
holds no checkpoint (its run died before the first save, even by kill -9) is reused by the
next run; an ``--out`` through a file is bad input (exit 2, one line), not a traceback.
"""

from __future__ import annotations

import pytest

from tests.test_train_cli import TINY, assert_usage_error, run


def test_a_bad_corpus_leaves_no_folder(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    for corpus in (empty, binary):
        out = tmp_path / f"run-{corpus.stem}"
        assert_usage_error(run("tinymlm.train", "--corpus", corpus, "--out", out))
        assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_bad_options_leave_no_folder(tmp_path):
    assert_usage_error(run("tinymlm.train", "--steps", "0", "--out", tmp_path / "r"), "--steps")
    assert not (tmp_path / "r").exists()


def test_a_retry_after_a_run_that_died_before_its_first_save(tmp_path):
    out = tmp_path / "run"
    # What a run killed with -9 in its first save leaves: its settings, a half-written
    # checkpoint that was never published (no `current`), a temporary file of an atomic write.
    (out / "checkpoints" / "step-0000001").mkdir(parents=True)
    (out / "checkpoints" / "step-0000001" / "config.json").write_text("{")
    (out / "train_config.json").write_text('{"steps": 99}')
    (out / ".metrics.jsonl.abc123.tmp").write_text("")
    result = run("tinymlm.train", *TINY, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "current").is_symlink() and (out / "model.safetensors").is_file()
    assert '"steps": 2' in (out / "train_config.json").read_text()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]


@pytest.mark.parametrize("out", ["a-file", "a-file/run", "/dev/null/run"])
def test_out_through_a_file_is_bad_input(tmp_path, out):
    (tmp_path / "a-file").write_text("keep me")
    result = run("tinymlm.train", *TINY, "--out", out, cwd=tmp_path)
    assert_usage_error(result, "not a folder", "--out")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_a_folder_of_other_files_is_not_taken_over(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    assert_usage_error(run("tinymlm.train", *TINY, "--out", tmp_path), "notes.txt", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
