"""The one prepared GPU check: ``PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR``.

A run that cannot come back empty. From the source tree, no install step, no network:

1. **smoke** (cap 20 s, about 10 s expected): versions (Python, NumPy, Numba, numba-cuda,
   CuPy, the CUDA Python bindings, PyTorch, transformers), driver, runtime and card; one CuPy
   elementwise op, one matmul, and a trivial Numba kernel on a CuPy array through the
   package's launch helper (``tinymlm.kernels.launch``). ``DIR/gpu_check.json`` is written
   right after it.
2. **attention** (cap 60 s), **cross_entropy** (cap 55 s), **training** (cap 70 s),
   **gpu_tests** (cap 35 s): the sections in ``benchmarks/gpu_sections/``, the kernels that
   have never run on hardware first. Each runs in a child process of its own with a hard time
   cap, so a hang or a sticky CUDA error (an illegal address poisons the process's context)
   costs that section only. At its cap a child gets SIGTERM and 4 s to write what it has
   measured so far (the section's report fills as it goes); then its whole process group is
   killed. A section that fails, raises, crashes or runs out of time is recorded with its
   error and output tail, and the run goes on. JSON and Markdown (``DIR/gpu_check.md``) are
   rewritten after every section, so a run stopped from outside still leaves what it
   finished.

Time on an H100, by estimate (nothing here has been timed on one yet): the caps add up to
240 s, the grace periods to at most 20 s, the parent's own work (versions, writing files) to
about 2 s: 4 min 22 s at the very worst, under 4.5 minutes by construction, about 3 minutes
expected, so a second run fits in a short loan of a GPU. Compilation is inside the
caps: about 40 Numba kernel specializations over all sections (1-3 s each; each child
compiles its own), CuPy's elementwise kernels (compiled once, then cached on disk for the
later children) and PyTorch's start (about 5 s per child that imports it).

Every section that compiles Numba kernels reports, per compiled specialization, registers per
thread, local memory per thread and shared memory per block (``kernels`` in the JSON, a table
in the Markdown). The training section records, per row, how many times each fused kernel ran
per step and how many times the reference path was taken instead.

Exit status: 0 when every section passed; 1 when one failed. A machine with no GPU at all (no
NVIDIA device files, no ``nvidia-smi``, or ``CUDA_VISIBLE_DEVICES`` empty) finishes in seconds
with ``"gpu": false`` and the reason in the JSON, status 0. A GPU with a broken CuPy or
numba-cuda is a failure (status 1), not a skip.

The commit: ``--commit SHA`` or ``TINYMLM_COMMIT`` (``.git`` does not travel to the GPU
machine), else ``git rev-parse HEAD`` where a ``.git`` is at hand. TF32 is off on every side
unless a row says otherwise (``CUPY_TF32=0`` in every child; PyTorch's flags in the sections).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name, module, hard cap in seconds (the child process is killed at the cap)
SMOKE = ("smoke", "gpu_sections.smoke", 20)
SECTIONS = [
    ("attention", "gpu_sections.attention", 60),
    ("cross_entropy", "gpu_sections.cross_entropy", 55),
    ("training", "gpu_sections.training", 70),
    ("gpu_tests", "gpu_sections.gpu_tests", 35),
]
GRACE_S = 4  # at its cap a child gets SIGTERM and this long to write what it has; then SIGKILL
CHILD_ENV = {
    "CUPY_TF32": "0",  # before CuPy is imported: plain float32 matmuls
    # Validation launches small grids on purpose; Numba's "grid size N will likely result in
    # GPU under-utilization" warning says nothing about them, and buries the real output.
    "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS": "0",
}
DISTRIBUTIONS = (
    "numpy",
    "numba",
    "numba-cuda",
    "cuda-bindings",
    "cuda-python",
    "torch",
    "transformers",
    "safetensors",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--quick", action="store_true", help="fewer repeats and rows")
    p.add_argument(
        "--commit",
        default=os.environ.get("TINYMLM_COMMIT"),
        help="the commit being checked (default: $TINYMLM_COMMIT, else git rev-parse HEAD)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=[s[0] for s in SECTIONS],
        default=[s[0] for s in SECTIONS],
        help="which sections to run after the smoke stage (default: all, in order)",
    )
    # internal: the parent starts each section as a child with these
    p.add_argument("--child", help=argparse.SUPPRESS)  # the section's name
    p.add_argument("--child-module", help=argparse.SUPPRESS)  # its module
    p.add_argument("--cap", type=float, default=0.0, help=argparse.SUPPRESS)  # its time cap
    p.add_argument("--result", help=argparse.SUPPRESS)  # where it writes its result
    return p.parse_args(argv)


# --- what machine this is (no CuPy import in the parent: a broken one could hang it) -----------


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in DISTRIBUTIONS:
        found[dist] = _version(dist)
    cupy_dists = [
        d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy") if _version(d) != "not installed"
    ]
    found["cupy"] = "not installed"
    if cupy_dists:
        found["cupy"] = f"{_version(cupy_dists[0])} ({cupy_dists[0]})"
    return found


def gpu_visible() -> tuple[bool, str]:
    """(True, how it was seen) when this machine shows an NVIDIA GPU to CUDA; (False, why not).

    Looks only at the driver's traces (device files, nvidia-smi), never at CuPy: a GPU with a
    broken CuPy must count as a GPU, so that the smoke stage reports the breakage.
    """
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False, f"no GPU: CUDA_VISIBLE_DEVICES={hidden!r} hides every device"
    devices = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/proc/driver/nvidia/gpus/*")
    if devices:
        return True, f"device files: {', '.join(sorted(devices)[:4])}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
            if listed.returncode == 0 and "GPU" in listed.stdout:
                return True, listed.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return False, "no GPU: no NVIDIA device files and no nvidia-smi that lists one"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown (no .git here: pass --commit or TINYMLM_COMMIT)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git failed: pass --commit or TINYMLM_COMMIT)"


# --- one section in a child process -------------------------------------------------------------


def child_main(name: str, module_name: str, result_path: str, quick: bool, cap_s: float) -> int:
    """Run one section in this (child) process and write its result as JSON."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    report: dict = {}
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _stop_at_the_cap)
    try:
        module = importlib.import_module(module_name)
        kwargs = {}
        if name == "gpu_tests":
            kwargs["timeout_s"] = max(5.0, cap_s - 8)  # pytest's own limit, inside the cap
        elif name == "training":
            kwargs["budget_s"] = max(5.0, cap_s - 15)  # start no new row past this
        lines = module.run(report, quick, **kwargs)
        status = "failed" if section_failed(name, report, lines) else "ok"
        result = {"status": status, "lines": list(lines)}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are recorded too
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        result = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": tb[-4000:],
            "lines": [f"ERROR {type(exc).__name__}: {exc}"],
        }
    result["report"] = report
    result["kernels"] = _compiled_kernels()
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(result_path).write_text(json.dumps(result, default=_jsonable))
    return 0


def _stop_at_the_cap(signum, frame):
    raise TimeoutError("stopped at the section's time cap")


def _compiled_kernels() -> list[dict]:
    """Registers, local and shared memory of every kernel specialization this process compiled."""
    if "tinymlm.kernels.launch" not in sys.modules:
        return []
    try:
        return sys.modules["tinymlm.kernels.launch"].compiled_resources()
    except Exception as exc:  # the report must not cost the section its result
        return [{"error": f"{type(exc).__name__}: {exc}"}]


def section_failed(name: str, report: dict, lines: list[str]) -> bool:
    """A section failed when it says so: an 'ok' or 'validation_ok' that is False in its
    report entry, or a line with FAILED."""
    entry = report.get(name, {})
    flags = [entry.get(k) for k in ("ok", "validation_ok")] if isinstance(entry, dict) else []
    return any(f is False for f in flags) or any("FAILED" in line for line in lines)


def run_in_child(name, module_name, cap_s, quick, extra_path=None) -> dict:
    """Start ``gpu_check.py --child NAME`` with a hard cap; its result, or why there is none."""
    env = dict(os.environ, **CHILD_ENV)
    paths = [str(ROOT), str(ROOT / "benchmarks"), *([str(extra_path)] if extra_path else [])]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--out", tmp, "--child", name,
                   "--result", str(result_path), "--child-module", module_name,
                   "--cap", str(cap_s), *(["--quick"] if quick else [])]  # fmt: skip
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the cap kills grandchildren too
        )
        timed_out = False
        try:
            output, _ = proc.communicate(timeout=cap_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()  # the child writes what it has (see _stop_at_the_cap)
            try:
                output, _ = proc.communicate(timeout=GRACE_S)
            except subprocess.TimeoutExpired:  # stuck in a CUDA call: no Python runs there
                os.killpg(proc.pid, signal.SIGKILL)
                output, _ = proc.communicate()
        try:  # grandchildren (pytest) must not outlive the section
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        seconds = round(time.perf_counter() - started, 1)
        tail = (output or "")[-4000:]
        if result_path.exists():
            result = json.loads(result_path.read_text())
            if timed_out:
                why = f"stopped at its {cap_s:.0f} s cap"
                result.update(status="timeout", error=why)
                result["lines"] = [*result.get("lines", []), f"FAILED {why}"]
        elif timed_out:
            why = f"stopped at its {cap_s:.0f} s cap (killed)"
            result = {"status": "timeout", "error": why, "lines": [f"FAILED {why}"]}
        else:
            why = f"the child process exited {proc.returncode} without a result (a crash?)"
            result = {"status": "error", "error": why, "lines": [f"FAILED {why}"]}
    result.update({"seconds": seconds, "cap_s": cap_s, "output_tail": tail})
    return result


# --- the output ---------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    v = report["versions"]
    smoke = report["sections"].get("smoke", {}).get("report", {}).get("smoke", {})
    card = smoke.get("card") or report.get("gpu_reason", "")
    out = [
        "# tinymlm GPU check",
        "",
        "| | |",
        "|---|---|",
        f"| card | {card} |",
        f"| date | {report['date']} |",
        f"| commit | {report['commit']} |",
        f"| command | `{report['command']}` |",
        f"| CUDA | driver {smoke.get('cuda_driver', 'n/a')}, runtime "
        f"{smoke.get('cuda_runtime', 'n/a')} |",
        f"| versions | Python {v['python']}, NumPy {v['numpy']}, Numba {v['numba']}, numba-cuda "
        f"{v['numba-cuda']}, CuPy {v['cupy']}, cuda-bindings {v['cuda-bindings']}, PyTorch "
        f"{v['torch']}, transformers {v['transformers']} |",
        f"| total | {report.get('seconds', 0):.0f} s; status: {report.get('status', 'running')} |",
        "",
    ]
    for name, result in report["sections"].items():
        cap = f" of {result['cap_s']:.0f} s" if "cap_s" in result else ""
        out += [f"## {name}: {result['status']} ({result.get('seconds', 0):.0f} s{cap})", ""]
        out += _lines_to_markdown(result.get("lines", []))
        if result["status"] in ("error", "timeout") and result.get("output_tail"):
            out += ["", "Last output:", "```", *result["output_tail"].splitlines()[-25:], "```"]
        out.append("")
    kernels = report.get("kernels", [])
    if kernels:
        out += [
            "## compiled kernels",
            "",
            "| section | kernel | signature | bound | registers | local B/thread | "
            "shared B/block | registers fit |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for k in kernels:
            if "error" in k:
                out.append(f"| {k['section']} | FAILED to read: {k['error']} | | | | | | |")
                continue
            out.append(
                f"| {k['section']} | {k['kernel']} | `{k['signature']}` | {k['launch_bound']} | "
                f"{k['registers_per_thread']} | {k['local_bytes_per_thread']} | "
                f"{k['shared_bytes_per_block']} | {'yes' if k['registers_fit'] else 'NO'} |"
            )
        out.append("")
    return "\n".join(out)


def _lines_to_markdown(lines: list[str]) -> list[str]:
    """Table rows (starting with '|') as they are; runs of other lines in code blocks."""
    out, plain = [], []

    def flush():
        if any(line.strip() for line in plain):
            out.extend(["```", *plain, "```"])
        plain.clear()

    for line in lines:
        if line.lstrip().startswith("|"):
            if not out or not out[-1].lstrip().startswith("|"):
                flush()
                if out and out[-1]:
                    out.append("")
            out.append(line)
        else:
            if out and out[-1].lstrip().startswith("|"):
                out.append("")
            plain.append(line)
    flush()
    return out


def _jsonable(value):
    """NumPy / CuPy scalars and arrays that sections leave in the report, as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_outputs(out_dir: Path, report: dict) -> None:
    sys.path.insert(0, str(ROOT))
    from tinymlm.fileio import atomic_write_text

    text = json.dumps(report, indent=2, default=_jsonable)
    atomic_write_text(out_dir / "gpu_check.json", text + "\n")
    atomic_write_text(out_dir / "gpu_check.md", markdown(report) + "\n")


def record(report: dict, name: str, result: dict) -> None:
    report["sections"][name] = result
    for row in result.get("kernels", []):
        report["kernels"].append({"section": name, **row})
    print(f"\n== {name}: {result['status']} ({result.get('seconds', 0):.0f} s)", flush=True)
    print("\n".join(result.get("lines", [])), flush=True)


def main(argv=None, sections=None, extra_path=None) -> int:
    """The parent: smoke stage, then every section, each in a child. ``sections`` (a list of
    (name, module, cap) like :data:`SECTIONS`) and ``extra_path`` are for the tests."""
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.child_module, args.result, args.quick, args.cap)
    started = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = ["python3", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": args.commit or git_commit(),
        "command": "PYTHONPATH=. " + shlex.join(command),
        "quick": args.quick,
        "versions": versions(),
        "sections": {},
        "kernels": [],
        "status": "running",
    }
    report["gpu"], report["gpu_reason"] = gpu_visible()
    print(json.dumps({k: report[k] for k in ("date", "commit", "versions", "gpu")}, indent=1))
    if not report["gpu"]:
        print(report["gpu_reason"])
        for name, _, _ in [SMOKE, *SECTIONS]:
            report["sections"][name] = {"status": "not run", "lines": [report["gpu_reason"]]}
        report["status"] = "no GPU: nothing to check"
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_outputs(out_dir, report)
        print(f"wrote {out_dir / 'gpu_check.json'}: {report['gpu_reason']}")
        return 0

    chosen = sections if sections is not None else [s for s in SECTIONS if s[0] in args.sections]
    for name, module_name, cap_s in [SMOKE, *chosen]:
        record(report, name, run_in_child(name, module_name, cap_s, args.quick, extra_path))
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_outputs(out_dir, report)

    bad = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    report["status"] = f"failed: {', '.join(bad)}" if bad else "ok"
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(out_dir, report)
    print(f"\nwrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'} "
          f"in {report['seconds']:.0f} s: {report['status']}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
