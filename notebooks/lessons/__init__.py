"""The cells of each lesson, one module per notebook (see ../build_notebooks.py)."""

from lessons import (
    lesson01_mlm,
    lesson02_autograd,
    lesson03_backward,
    lesson04_attention,
    lesson05_pretraining,
    lesson06_kernels,
    lesson07_beyond_mlm,
)

LESSONS = {
    "01_masked_language_modeling": lesson01_mlm.CELLS,
    "02_autograd_from_scratch": lesson02_autograd.CELLS,
    "03_deriving_backward_passes": lesson03_backward.CELLS,
    "04_attention_and_the_encoder": lesson04_attention.CELLS,
    "05_pretraining_a_small_bert": lesson05_pretraining.CELLS,
    "06_gpu_and_kernels": lesson06_kernels.CELLS,
    "07_beyond_mlm": lesson07_beyond_mlm.CELLS,
}
