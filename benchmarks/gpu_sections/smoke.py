"""GPU check, smoke stage: is the GPU stack usable at all? About 10 seconds.

``run(report, quick)`` fills ``report['smoke']`` with the versions CUDA itself reports (driver,
runtime, the card, its compute capability and memory), then runs the smallest thing each layer
can do, each checked against NumPy:

* a CuPy elementwise op (CuPy's kernel compilation through NVRTC);
* a CuPy float32 matmul (cuBLAS);
* a trivial Numba kernel on a CuPy array through ``tinymlm.kernels.launch`` (NVVM, the driver's
  module loading, the CuPy -> Numba array hand-over, CuPy's stream as Numba's).

Anything that raises is a failure of the stage: on a machine with a GPU, a CuPy or numba-cuda
that does not work is a broken install, not a reason to skip.
"""

from __future__ import annotations

import time

import numpy as np


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def numba_cuda_note(section: dict) -> str:
    """numba-cuda before 0.25 hands CuPy arrays to kernels through __cuda_array_interface__,
    synchronising the stream once per argument per launch: slow, not wrong."""
    from importlib import metadata

    version = metadata.version("numba-cuda")
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    section["numba_cuda_dlpack"] = major_minor >= (0, 25)
    if section["numba_cuda_dlpack"]:
        return f"numba-cuda {version}: CuPy arrays reach kernels by DLPack, no sync per argument"
    return (f"numba-cuda {version} (below 0.25): every CuPy argument synchronises the stream; "
            "the timings are slower than they need be")  # fmt: skip


def run(report: dict, quick: bool) -> list[str]:
    section = report.setdefault("smoke", {})
    lines = []
    started = time.perf_counter()

    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = cp.cuda.Device(0).mem_info
    section.update(
        {
            "card": name,
            "compute_capability": cp.cuda.Device(0).compute_capability,
            "sm_count": props.get("multiProcessorCount"),
            "memory_total_gib": round(total / 2**30, 1),
            "memory_free_gib": round(free / 2**30, 1),
            "cuda_runtime": _cuda_version(cp.cuda.runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(cp.cuda.runtime.driverGetVersion()),
            "cupy_import_s": round(time.perf_counter() - started, 2),
        }
    )
    lines.append(
        f"{name} (cc {section['compute_capability']}, {section['memory_total_gib']} GiB), "
        f"driver CUDA {section['cuda_driver']}, runtime {section['cuda_runtime']}"
    )
    checks = {}

    x = np.arange(1000, dtype=np.float32)  # (1000,)
    got = cp.asnumpy(cp.asarray(x) * np.float32(2) + np.float32(1))
    checks["cupy elementwise"] = bool(np.array_equal(got, x * 2 + 1))

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))  # (64, 64)
    got = cp.asnumpy(cp.asarray(a) @ cp.asarray(b))
    checks["cupy matmul"] = bool(np.allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4))

    tic = time.perf_counter()
    from numba import cuda, float32

    from tinymlm.kernels.launch import cuda_kernel, launch

    @cuda_kernel(128)
    def add_one(values):
        i = cuda.grid(1)
        if i < values.size:
            values[i] += float32(1.0)

    values = cp.zeros(1000, dtype=np.float32)  # (1000,): 8 blocks, the last one partial
    launch(add_one, 8, 128, values)
    checks["numba kernel on a cupy array (launch helper)"] = bool((cp.asnumpy(values) == 1).all())
    section["numba_first_kernel_s"] = round(time.perf_counter() - tic, 2)
    section["checks"] = checks
    section["ok"] = all(checks.values())
    section["seconds"] = round(time.perf_counter() - started, 2)
    for what, ok in checks.items():
        lines.append(f"{what}: {'ok' if ok else 'FAILED'}")
    lines.append(numba_cuda_note(section))
    lines.append(f"first Numba kernel (compile + launch): {section['numba_first_kernel_s']} s")
    return lines


if __name__ == "__main__":
    print("\n".join(run({}, quick=False)))
