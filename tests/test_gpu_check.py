"""benchmarks/gpu_check.py runs anywhere, and a failing section cannot take the run with it.

Without a GPU it finishes in seconds with a JSON that says so. With one (here: a GPU the
check is told it sees, and section modules written by the test), every section runs in a child
process with a hard cap: a section that raises, fails, crashes, hangs or ignores SIGTERM is
recorded with its reason, what it measured before the cap is kept, the JSON is rewritten after
each section, later sections still run, and the exit status is 1. A CuPy that does not import
on a GPU machine fails the smoke stage instead of being skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_finishes_in_seconds_and_says_so(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--commit", "abc123"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.perf_counter() - started < 20
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpu"] is False and report["gpu_reason"].startswith("no GPU")
    assert report["commit"] == "abc123"
    assert {s["status"] for s in report["sections"].values()} == {"not run"}
    assert list(report["sections"]) == ["smoke", "attention", "cross_entropy", "training",
                                        "gpu_tests"]  # fmt: skip
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| card | no GPU" in table and "| commit | abc123 |" in table


SECTION_MODULES = {
    "fine_section": """
def run(report, quick):
    report["fine"] = {"ok": True}
    return ["fine: ok"]
""",
    "raising_section": """
def run(report, quick):
    raise RuntimeError("an illegal memory access was encountered")
""",
    "failing_section": """
def run(report, quick):
    report["failing"] = {"validation_ok": False}
    return ["3 mismatches FAILED"]
""",
    "crashing_section": """
import os
def run(report, quick):
    os._exit(3)
""",
    "hanging_section": """
import time
def run(report, quick):
    report["hanging"] = {"measured_before_the_hang": 1}
    time.sleep(600)
""",
    "stubborn_section": """
import signal, time
def run(report, quick):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a process stuck in a CUDA call
    time.sleep(600)
""",
    "probe_section": """
import json, os
from pathlib import Path
def run(report, quick):
    seen = json.loads((Path(os.environ["GPU_CHECK_TEST_OUT"]) / "gpu_check.json").read_text())
    report["probe"] = {"sections_already_written": list(seen["sections"])}
    return ["probe: ok"]
""",
}


def test_every_kind_of_section_failure_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    for name, text in SECTION_MODULES.items():
        (modules / f"{name}.py").write_text(text)
    out = tmp_path / "out"
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "gpu_visible", lambda: (True, "told so by the test"))
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    monkeypatch.setenv("GPU_CHECK_TEST_OUT", str(out))
    sections = [
        ("fine", "fine_section", 30),
        ("raising", "raising_section", 30),
        ("failing", "failing_section", 30),
        ("crashing", "crashing_section", 30),
        ("hanging", "hanging_section", 3),
        ("stubborn", "stubborn_section", 3),
        ("probe", "probe_section", 30),
    ]
    started = time.perf_counter()
    status = gpu_check.main(["--out", str(out)], sections=sections, extra_path=modules)
    assert time.perf_counter() - started < 60, "the caps did not stop the hanging sections"
    assert status == 1
    report = json.loads((out / "gpu_check.json").read_text())
    results = report["sections"]
    assert list(results) == ["smoke", *(name for name, _, _ in sections)]

    # No CuPy here, yet a GPU is "seen": the smoke stage fails instead of skipping.
    assert results["smoke"]["status"] == "error"
    assert "cupy" in results["smoke"]["error"].lower()

    assert results["fine"]["status"] == "ok" and results["fine"]["lines"] == ["fine: ok"]
    assert results["raising"]["status"] == "error"
    assert "illegal memory access" in results["raising"]["error"]
    assert results["failing"]["status"] == "failed"
    assert results["crashing"]["status"] == "error" and "exited 3" in results["crashing"]["error"]
    assert results["hanging"]["status"] == "timeout"
    assert results["hanging"]["report"]["hanging"] == {"measured_before_the_hang": 1}
    assert results["stubborn"]["status"] == "timeout" and results["stubborn"]["seconds"] < 10
    # the JSON on disk was rewritten after each section, before the next one started
    written = results["probe"]["report"]["probe"]["sections_already_written"]
    assert written == ["smoke", "fine", "raising", "failing", "crashing", "hanging", "stubborn"]
    assert report["status"].startswith("failed: smoke, raising, failing, crashing, hanging")
    table = (out / "gpu_check.md").read_text()
    assert "## hanging: timeout" in table and "## fine: ok" in table


@pytest.mark.parametrize(
    "lines, entry, failed",
    [(["ok"], {"ok": True}, False), (["x FAILED"], {}, True), ([], {"validation_ok": False}, True),
     ([], {"ok": False}, True), ([], "not a dict", False)],
)  # fmt: skip
def test_a_section_fails_when_it_says_so(lines, entry, failed):
    gpu_check = load_gpu_check()
    assert gpu_check.section_failed("s", {"s": entry}, lines) is failed


def load_training_section():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_sections import training
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return training


def test_a_training_row_counts_fused_launches_and_reference_path_ops(monkeypatch):
    from tinymlm import kernels
    from tinymlm.kernels import attention, launch

    training = load_training_section()
    answers = {"gelu": None, "layer_norm": "a fused kernel"}  # what the dispatch table says
    monkeypatch.setattr(kernels, "select", lambda op, *arrays: answers[op], raising=False)
    dispatch = kernels.select
    launch.launches["left over from timing"] = 5  # counting starts from zero

    def step():
        for _ in range(2):
            launch.launches["cross_entropy_forward"] += 1  # as launch.launch counts
        for op in ("gelu", "gelu", "layer_norm"):
            kernels.select(op)
        attention.declined["measured slower for this shape"] += 3

    synced = []
    counts = training.counted_step(step, lambda: synced.append(True))
    assert counts == {
        "fused_kernel_launches": {"cross_entropy_forward": 2},
        "reference_path_ops": {"gelu": 2},
        "attention_kernels_declined": {"measured slower for this shape": 3},
    }
    assert synced == [True] and kernels.select is dispatch  # the table is put back
    section = {"rows": [training._row("bert-base", "tinymlm", 10.0, 1.0, [1.0], 4096,
                                      per_step=counts)],
               "parity": [], "skipped": [], "errors": []}  # fmt: skip
    text = "\n".join(training.format_lines(section))
    assert "fused kernels ran cross_entropy_forward 2; reference path taken by gelu 2" in text
    assert "fused attention declined: measured slower for this shape 3" in text
