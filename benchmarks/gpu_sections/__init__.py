"""The sections of ``benchmarks/gpu_check.py``, one module each.

Every section module has ``run(report: dict, quick: bool) -> list[str]``: it fills its own key
of ``report`` (what goes into gpu_check.json) and returns the lines of its part of the table
(gpu_check.md). A section imports CuPy, PyTorch and the kernels inside ``run``, so importing it
on a machine without a GPU costs nothing and fails nothing.

* ``gpu_tests``      the GPU-marked tests (``pytest -m gpu``), pass/fail counts
* ``training``       a full tinymlm training step beside Hugging Face's BertForMaskedLM
* ``attention``      the fused attention kernels: validation, then timings
* ``cross_entropy``  the fused softmax + cross-entropy kernels: validation, then timings
"""
