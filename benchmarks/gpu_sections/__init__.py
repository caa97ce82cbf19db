"""The sections of ``benchmarks/gpu_check.py``, one module each, in the order they run.

Every section module has ``run(report: dict, quick: bool) -> list[str]``: it fills its own key
of ``report`` as it goes (what goes into gpu_check.json: a section stopped at its time cap
keeps what it measured) and returns the lines of its part of the table (gpu_check.md).
``gpu_check.py`` runs each in a child process of its own with a hard time cap. A section
imports CuPy, PyTorch and the kernels inside ``run``, so importing it on a machine without a
GPU costs nothing and fails nothing.

* ``smoke``          versions, card, one CuPy op, a matmul, a Numba kernel through the launch
                     helper: is the stack usable at all
* ``attention``      the fused attention kernels: validation, then timings
* ``cross_entropy``  the fused softmax + cross-entropy kernels: validation, then timings
* ``training``       a full tinymlm training step beside Hugging Face's BertForMaskedLM, with the
                     fused kernel launches and reference-path ops of one step
* ``gpu_tests``      the GPU-marked tests (``pytest -m gpu``), pass/fail counts
"""
