"""The one prepared GPU check: ``PYTHONPATH=. python benchmarks/gpu_check.py --out DIR [--quick]``.

One run of at most four minutes, from the source tree, with no install step and no network:

1. versions (Python, NumPy, Numba, numba-cuda, CuPy, PyTorch, transformers, CUDA runtime and
   driver) and the device;
2. the sections in ``benchmarks/gpu_sections/``, in order: the GPU tests, the training step
   beside PyTorch, the fused attention kernels, the fused cross-entropy kernels. Each runs in
   its own try/except within its own share of the time, so one failing section never stops
   the others; a section that would start too late is skipped and says so;
3. ``DIR/gpu_check.json`` (everything) and ``DIR/gpu_check.md`` (card, date, commit, command,
   then each section's lines), rewritten after every section, so a run stopped from outside
   still leaves what it finished.

TF32 is off on every side unless a row says otherwise: ``CUPY_TF32=0`` is set before CuPy is
imported, and PyTorch's ``allow_tf32`` flags are cleared.

Without a GPU (or without CuPy) every GPU section is recorded as skipped with the reason, and
the script exits 0. With one, it exits 1 when a section raised or reported a failure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ["CUPY_TF32"] = "0"  # before CuPy is imported: plain float32 matmuls

# name, module, the least time (s) worth starting it with, the most it may take (s)
SECTIONS = [
    ("gpu_tests", "gpu_sections.gpu_tests", 30, 80),
    ("training", "gpu_sections.training", 30, 60),
    ("attention", "gpu_sections.attention", 30, None),
    ("cross_entropy", "gpu_sections.cross_entropy", 25, None),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--quick", action="store_true", help="fewer repeats and rows")
    p.add_argument(
        "--budget",
        type=float,
        default=220.0,
        help="seconds for the whole run (default 220: under the 4-minute limit)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=[s[0] for s in SECTIONS],
        default=[s[0] for s in SECTIONS],
        help="which sections to run",
    )
    return p.parse_args(argv)


# --- what machine this is -----------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("numpy", "numba", "numba-cuda", "torch", "transformers", "safetensors"):
        found[dist] = _version(dist)
    cupy_dists = [
        d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy") if _version(d) != "not installed"
    ]
    found["cupy"] = (
        f"{_version(cupy_dists[0])} ({cupy_dists[0]})" if cupy_dists else "not installed"
    )
    return found


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def device_info() -> tuple[dict | None, str]:
    """(facts about GPU 0, '') or (None, why there is no usable GPU)."""
    try:
        import cupy as cp
    except ImportError as exc:
        return None, f"no GPU: CuPy is not installed ({exc})"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return None, "no GPU: CUDA sees no device"
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        free, total = cp.cuda.Device(0).mem_info
        info = {
            "name": name,
            "compute_capability": cp.cuda.Device(0).compute_capability,
            "memory_total_gib": round(total / 2**30, 1),
            "memory_free_gib": round(free / 2**30, 1),
            "cuda_runtime": _cuda_version(cp.cuda.runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(cp.cuda.runtime.driverGetVersion()),
        }
    except Exception as exc:  # no driver, no device, a broken install
        return None, f"no GPU: {type(exc).__name__}: {exc}"
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_sees_gpu"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info, ""


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def tf32_off() -> dict:
    settings = {"CUPY_TF32": os.environ.get("CUPY_TF32")}
    try:
        import torch
    except ImportError:
        return settings
    from gpu_sections.training import torch_tf32_off

    settings.update(torch_tf32_off(torch))
    return settings


# --- the sections -------------------------------------------------------------------------------


def section_failed(name: str, report: dict, lines: list[str]) -> bool:
    """A section failed when it says so: an 'ok' or 'validation_ok' that is False in its
    report entry, or a line with FAILED."""
    entry = report.get(name, {})
    flags = [entry.get(k) for k in ("ok", "validation_ok") if isinstance(entry, dict)]
    return any(f is False for f in flags) or any("FAILED" in line for line in lines)


def run_section(name, module_name, budget_s, quick, report) -> dict:
    started = time.perf_counter()
    try:
        module = importlib.import_module(module_name)
        if name == "gpu_tests":
            lines = module.run(report, quick, timeout_s=budget_s)
        elif name == "training":
            lines = module.run(report, quick, budget_s=budget_s)
        else:  # the kernel sections: run(report, quick)
            lines = module.run(report, quick)
        status = "failed" if section_failed(name, report, lines) else "ok"
        result = {"status": status, "lines": list(lines)}
    except Exception as exc:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        result = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": tb[-4000:],
            "lines": [f"ERROR {type(exc).__name__}: {exc}"],
        }
    finally:
        try:  # give the GPU memory back before the next section
            import cupy as cp

            cp.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# --- the output ---------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    device = report.get("device") or {}
    v = report["versions"]
    out = [
        "# tinymlm GPU check",
        "",
        "| | |",
        "|---|---|",
        f"| card | {device.get('name', report.get('no_gpu_reason', 'no GPU'))} |",
        f"| date | {report['date']} |",
        f"| commit | {report['commit']} |",
        f"| command | `{report['command']}` |",
        f"| CUDA | runtime {device.get('cuda_runtime', 'n/a')}, driver "
        f"{device.get('cuda_driver', 'n/a')} |",
        f"| versions | Python {v['python']}, NumPy {v['numpy']}, Numba {v['numba']}, numba-cuda "
        f"{v['numba-cuda']}, CuPy {v['cupy']}, PyTorch {v['torch']}, transformers "
        f"{v['transformers']} |",
        f"| TF32 | {report.get('tf32')} |",
        f"| total | {report.get('seconds', 0):.0f} s |",
        "",
    ]
    for name, result in report["sections"].items():
        out += [f"## {name}: {result['status']} ({result.get('seconds', 0):.0f} s)", ""]
        out += _lines_to_markdown(result.get("lines", []))
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
    from tinymlm.fileio import atomic_write_text

    text = json.dumps(report, indent=2, default=_jsonable)
    atomic_write_text(out_dir / "gpu_check.json", text + "\n")
    atomic_write_text(out_dir / "gpu_check.md", markdown(report) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": shlex.join(["PYTHONPATH=.", "python", *sys.argv])
        if argv is None
        else shlex.join(["python", "benchmarks/gpu_check.py", *argv]),
        "quick": args.quick,
        "versions": versions(),
        "sections": {},
    }
    device, reason = device_info()
    report["device"] = device
    if device is None:
        report["no_gpu_reason"] = reason
    report["tf32"] = tf32_off()
    print(json.dumps({k: report[k] for k in ("date", "commit", "versions", "device")}, indent=1))
    if reason:
        print(reason)

    for name, module_name, least_s, most_s in SECTIONS:
        if name not in args.sections:
            continue
        left = deadline - time.perf_counter()
        if device is None:
            result = {"status": "skipped", "reason": reason, "lines": [f"skipped: {reason}"]}
        elif left < least_s:
            why = f"skipped: {left:.0f} s left of the {args.budget:.0f} s budget"
            result = {"status": "skipped", "reason": why, "lines": [why]}
        else:
            print(f"\n== {name} ({left:.0f} s left)", flush=True)
            budget = left if most_s is None else min(most_s, left)
            result = run_section(name, module_name, budget, args.quick, report)
        report["sections"][name] = result
        print("\n".join(result["lines"]), flush=True)
        report["seconds"] = time.perf_counter() - started
        write_outputs(out_dir, report)

    report["seconds"] = time.perf_counter() - started
    write_outputs(out_dir, report)
    print(
        f"\nwrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'} "
        f"in {report['seconds']:.0f} s"
    )
    bad = [n for n, r in report["sections"].items() if r["status"] in ("failed", "error")]
    if bad:
        print(f"sections that failed: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
