"""Data-parallel training (issue 21): ``mpiexec -n 2 python -m tinymlm.train`` equals one
process on the same global batch, resumes across process counts, ends when a rank dies or
hangs, and refuses launches that cannot split the batch.

The runs start real MPI processes (the ``mpich`` wheel's ``mpiexec``, next to this Python,
from ``pip install -e ".[dev]"``) through tests/mpi_train.py, the training command with the
fact probes skipped. Runs are tiny: 20 steps of 4 sequences of 16 tokens, no dropout (each
rank draws its own dropout masks, so only dropout-free runs can equal the one-process run).

**Not bit-identical, and why.** With two processes each rank's gradient of a weight sums its
own rows and the two partial sums are then added: a different order of the same float32
additions than one process's sum over all rows. The per-rank loss is also its slice's mean
times c_r / C, not one mean over C. So parameters agree to within 6e-7 relative after 20
steps (1 tensor of 42 to the bit). The attention key biases are the exception: their exact
gradient is zero (softmax does not change when the same number is added to every score), so
they hold nothing but rounding noise (|b| < 5e-9 here), different noise in each run, and a
relative comparison of noise means nothing; they are compared as zero.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tinymlm import distributed
from tinymlm import train as train_module
from tinymlm.errors import UsageError
from tinymlm.objectives import pretraining

ROOT = Path(__file__).resolve().parent.parent
# the mpich wheel's, in the venv's bin beside python (or on PATH, as a --user install puts it)
MPIEXEC = Path(sys.executable).parent / "mpiexec"
if not MPIEXEC.exists() and shutil.which("mpiexec"):
    MPIEXEC = Path(shutil.which("mpiexec"))
RUN = ["--steps", "20", "--batch-size", "4", "--tinyworld-docs", "200", "--dropout", "0",
       "--log-every", "5", "--eval-every", "20", "--save-every", "20"]
RTOL = 1e-5  # the bound, per tensor: ‖a − b‖ ≤ RTOL · ‖b‖
ZERO_GRADIENT = "attention.self.key.bias"  # see the module docstring
TIMINGS = ("tokens_per_s", "gflops_per_s")


def mpirun(k: int, *argv, env: dict | None = None, timeout: float = 150):
    """``mpiexec -n k python tests/mpi_train.py argv``: the finished process."""
    assert MPIEXEC.exists(), f"no {MPIEXEC}: pip install -e '.[dev]' (mpi4py and mpich)"
    return subprocess.run([str(MPIEXEC), "-n", str(k), sys.executable,
                           str(ROOT / "tests" / "mpi_train.py"), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})})


def run_one(*argv) -> None:
    """One process, in this one (``--distributed none``: this test may itself be under MPI)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretraining, "knowledge_report", lambda *args: {"fact_accuracy": 0.0})
        assert train_module.main([*map(str, argv), "--distributed", "none"]) == 0


def run_two(*argv) -> None:
    done = mpirun(2, *argv)
    assert done.returncode == 0, done.stderr[-3000:]


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def assert_same_model(a: Path, b: Path) -> float:
    """Every tensor of a's model within RTOL of b's (the key biases: both ≈ 0); the logged
    losses and gradient norms too. Returns the worst relative difference."""
    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ours.keys() == theirs.keys()
    worst = 0.0
    for name, x in ours.items():
        x, y = x.astype(np.float64), theirs[name].astype(np.float64)
        if name.endswith(ZERO_GRADIENT):
            assert np.abs(x).max() < 1e-6 and np.abs(y).max() < 1e-6, name
            continue
        error = np.linalg.norm(x - y) / np.linalg.norm(y)
        assert error <= RTOL, f"{name}: {error:.2e} relative"
        worst = max(worst, error)
    row_a, row_b = rows(a), rows(b)
    assert [r["step"] for r in row_a] == [r["step"] for r in row_b]
    for r, s in zip(row_a, row_b):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in r:
                assert r[key] == pytest.approx(s[key], rel=RTOL), (r["step"], key)
    return worst


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """One process, 20 steps."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_one(*RUN, "--out", out)
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Two processes, 20 steps."""
    out = tmp_path_factory.mktemp("two") / "run"
    run_two(*RUN, "--out", out)
    return out


def test_two_processes_train_the_one_process_model(one, two):
    worst = assert_same_model(two, one)
    assert worst > 0  # not bit-identical: a different order of float32 additions (docstring)


def test_a_run_of_two_resumes_with_one_and_with_two(one, two, tmp_path):
    """Two processes stopped after step 10, then continued: by one process, equal to the
    one-process run within RTOL; by two, byte-identical to the uninterrupted run of two."""
    run_two(*RUN, "--out", tmp_path / "stopped", "--stop-after", "10")
    for name in ("resumed-by-one", "resumed-by-two"):
        shutil.copytree(tmp_path / "stopped", tmp_path / name, symlinks=True)
    run_one("--resume", tmp_path / "resumed-by-one")
    assert_same_model(tmp_path / "resumed-by-one", one)
    run_two("--resume", tmp_path / "resumed-by-two")
    assert ((tmp_path / "resumed-by-two" / "model.safetensors").read_bytes()
            == (two / "model.safetensors").read_bytes())
    assert rows(tmp_path / "resumed-by-two") == rows(two)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_rank_that_hangs_or_dies_ends_the_job(how, tmp_path):
    """Rank 1 hangs (SIGSTOP) or dies (SIGKILL) at step 3: a hang ends by rank 0's timeout on
    the all-reduce with a one-line reason; a death ends at once (mpiexec's own cleanup)."""
    timeout = 8
    started = time.monotonic()
    done = mpirun(2, *RUN, "--out", tmp_path / "run",
                  env={"TINYMLM_TEST_FAIL": f"1:3:{how}",
                       "TINYMLM_COLLECTIVE_TIMEOUT": str(timeout)})
    took = time.monotonic() - started
    assert done.returncode != 0
    if how == "stop":
        assert "waited 8 s for the other processes" in done.stderr, done.stderr[-2000:]
    # the start (imports, corpus, model) and the 2 steps before take a few seconds; the
    # job must not wait much past the timeout
    assert took < 60, f"the job took {took:.0f} s"


@pytest.mark.parametrize("batch_size, says", [
    (1, "2 processes for a --batch-size of 1"),
    (3, "--batch-size 3 does not split evenly over 2 processes"),
])
def test_a_batch_that_cannot_be_split_is_refused(batch_size, says, tmp_path):
    done = mpirun(2, *RUN[:2], "--batch-size", batch_size, "--out", tmp_path / "run",
                  timeout=90)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_rank_0_decides_the_run_folder_and_every_rank_hears_it(tmp_path):
    """A folder that holds a checkpoint is refused by rank 0 alone (it is the one that looks);
    the refusal reaches every rank, so all end with status 2 and one line between them."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "current").symlink_to("checkpoints/step-0000001")
    done = mpirun(2, *RUN, "--out", taken, timeout=90)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "already holds a checkpoint" in lines[0]


# --- in this process: no MPI needed ------------------------------------------------------------


@pytest.fixture
def under_mpiexec(monkeypatch):
    """The environment mpiexec gives rank ``rank`` of 2, with mpi4py missing."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError

    def launched_as(rank: int) -> None:
        monkeypatch.setenv("PMI_SIZE", "2")
        monkeypatch.setenv("PMI_RANK", str(rank))

    return launched_as


def test_under_mpiexec_without_mpi4py_rank_0_says_so_in_one_line(under_mpiexec, capsys):
    under_mpiexec(0)
    assert train_module.main(RUN) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mpi4py is not installed" in err[0], err
    under_mpiexec(1)
    assert train_module.main(RUN) == 2
    assert capsys.readouterr().err == ""  # the other ranks stay quiet: one line in all


def test_a_plain_run_never_imports_mpi4py(monkeypatch):
    for name in distributed.SIZE_VARIABLES + distributed.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    world = distributed.init("auto")
    assert (world.size, world.rank, world.is_main) == (1, 0, True)
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.init("none").size == 1  # none: one process, even under mpiexec
    with pytest.raises(UsageError, match="mpi4py is not installed"):
        distributed.init("auto")


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_collective_timeout_must_be_positive_seconds(value, monkeypatch):
    monkeypatch.setenv("TINYMLM_COLLECTIVE_TIMEOUT", value)
    with pytest.raises(UsageError, match="TINYMLM_COLLECTIVE_TIMEOUT must be a positive"):
        distributed.collective_timeout()


def test_buckets_are_of_one_dtype_bounded_and_largest_first():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    tensors = [(10, f32), (30, f32), (20, f32), (50, f32), (5, f64), (20, f32)]
    layout = distributed.bucket_layout(tensors, limit=40)
    assert layout == [[3], [1], [2, 5], [0], [4]]
    assert sorted(i for bucket in layout for i in bucket) == list(range(len(tensors)))


@pytest.mark.parametrize("name", ["mlm", "clm"])
def test_slices_of_the_global_mean_sum_to_the_one_process_gradient(name):
    """The identity the trainer relies on, on a real batch: rank r's mean loss scaled by
    c_r / C has gradients that sum to the whole batch's; a plain average of the per-rank means
    does not, because the ranks predict different numbers of tokens (masking; padding)."""
    from tinymlm.objectives import PRETRAINING, TrainConfig, build_corpus

    cfg = TrainConfig(batch_size=8, tinyworld_docs=200, dropout=0.0, objective=name)
    objective = PRETRAINING[name](cfg, build_corpus(cfg, lambda message: None))
    model = objective.build_model()
    batch = objective.batch(1, 0)

    def gradients(loss):
        loss.backward()
        grads = {name: p.grad.astype(np.float64) for name, p in model.named_parameters()
                 if p.grad is not None}
        for p in model.parameters():
            p.grad = None
        return grads

    whole = gradients(objective.loss(model, batch))
    total = objective.counts(batch)[0]
    halves = [{k: v[half * 4:(half + 1) * 4] for k, v in batch.items()} for half in (0, 1)]
    counts = [objective.counts(h)[0] for h in halves]
    assert counts[0] != counts[1] and sum(counts) == total  # masking gives unequal counts
    scaled = [gradients(objective.loss(model, h) * (c / total)) for h, c in zip(halves, counts)]
    averaged = [gradients(objective.loss(model, h) * 0.5) for h in halves]

    def error(parts):  # ‖Σ parts − whole‖ / ‖whole‖ over all the gradients
        return np.sqrt(sum(np.sum((parts[0][k] + parts[1][k] - g) ** 2) for k, g in whole.items())
                       / sum(np.sum(g ** 2) for g in whole.values()))

    assert error(scaled) < 1e-6
    assert error(averaged) > 1e-2
