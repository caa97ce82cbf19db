"""Compile a kernel for the H100 without one, and read what ptxas says about it.

Used by the kernel tests: ``compile_for(kernel, signature)`` gives the PTX that the GPU would
build (``tinymlm.kernels.launch.compile_ptx``: the kernel's own fastmath and launch bounds);
``ptxas_report(ptx)`` runs ``ptxas -v`` for sm_90 and returns registers per thread, stack frame,
spill stores and loads, and static shared memory. Tests skip (with the reason) only where the
tool is missing: libNVVM for the PTX, a CUDA toolkit's ptxas for the report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tinymlm.kernels import launch

PTXAS = shutil.which("ptxas") or (
    "/usr/local/bin/ptxas" if os.path.exists("/usr/local/bin/ptxas") else None
)


def compile_for(kernel, signature, cc=(9, 0)) -> str:
    try:
        return launch.compile_ptx(kernel, signature, cc=cc)
    except Exception as exc:  # no libNVVM in this environment
        if "NVVM" in str(exc) or "nvvm" in str(exc):
            pytest.skip(f"compile_ptx needs libNVVM: {exc}")
        raise


def max_threads(ptx: str) -> int | None:
    """The launch bound written into the PTX (``.maxntid N, 1, 1``), or None."""
    found = re.search(r"\.maxntid\s+(\d+)", ptx)
    return int(found.group(1)) if found else None


def ptxas_report(ptx: str) -> dict:
    """``ptxas -v -arch=sm_90`` on ``ptx``. A ptxas older than the NVVM that wrote the PTX
    refuses the newer ``.version`` line; the kernels use nothing newer, so retry at its own."""
    if PTXAS is None:
        pytest.skip("ptxas (CUDA toolkit) not found: cannot count registers and spills")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        for _ in range(2):
            path.write_text(ptx)
            proc = subprocess.run(
                [PTXAS, "-v", "-arch=sm_90", "-o", os.devnull, str(path)],
                capture_output=True,
                text=True,
            )
            older = re.search(r"current version is '(\d+\.\d+)'", proc.stderr)
            if proc.returncode == 0 or not older:
                break
            ptx = re.sub(r"^\.version \S+", f".version {older.group(1)}", ptx, flags=re.M)
    assert proc.returncode == 0, proc.stderr
    info = proc.stderr
    stack, stores, loads = map(
        int,
        re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", info
        ).groups(),
    )
    shared = re.search(r"(\d+) bytes smem", info)
    return {
        "registers": int(re.search(r"Used (\d+) registers", info).group(1)),
        "stack": stack,
        "spill_stores": stores,
        "spill_loads": loads,
        "shared": int(shared.group(1)) if shared else 0,
        "text": info,
    }


def assert_fits(report: dict, block: int, what: str) -> None:
    """No spills, no stack (per-thread arrays in registers), and ``block`` threads' registers
    within one block's register file: the launch cannot fail with "too many resources"."""
    assert (report["spill_stores"], report["spill_loads"]) == (0, 0), f"{what}: {report['text']}"
    assert report["stack"] == 0, f"{what}: per-thread arrays in local memory: {report['text']}"
    assert launch.registers_fit(report["registers"], block), (
        f"{what}: {report['registers']} registers x {block} threads exceed a block's "
        f"{launch.REGISTERS_PER_BLOCK}"
    )
    assert report["shared"] <= launch.STATIC_SHARED_LIMIT, f"{what}: {report['text']}"
