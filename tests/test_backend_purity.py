"""Model and autograd code do no NumPy math: they use the array module of their inputs.

The design's rule (one code path, two array modules): ``tinymlm/autograd.py``, ``ops.py``,
``optim.py`` and ``nn/*.py`` compute with ``xp = backend.get_array_module(x)``, so the same lines
run on NumPy and on CuPy. A direct ``np.exp(x)`` in a Function works on the CPU and breaks only
on the GPU, where no CPU test sees it. This test reads those files' syntax trees and fails on
every use of NumPy that is not on the allow-lists below, each entry with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED_FILES = sorted(
    [ROOT / "tinymlm" / n for n in ("autograd.py", "ops.py", "optim.py")]
    + list((ROOT / "tinymlm" / "nn").glob("*.py"))
)

# NumPy names that do no arithmetic on arrays: dtypes, dtype queries and type checks. They are
# the same objects CuPy uses (CuPy arrays have NumPy dtypes), so they are fine anywhere.
ALLOWED_EVERYWHERE = {
    "dtype",
    "finfo",
    "iinfo",
    "issubdtype",
    "result_type",
    "promote_types",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool_",
    "generic",
    "ndarray",
    "number",
    "integer",
    "floating",
}

# (file relative to the repository, function's qualified name): NumPy names it may use.
# Initialisation is host-side by design: new parameters are made on the CPU from the seeded CPU
# generator (so a model is the same on every machine), and model.to("cuda") moves them.
ALLOWED_IN = {
    # Tensor(3.0) or Tensor([1, 2]): the user's Python numbers become a host array.
    ("tinymlm/autograd.py", "Tensor.__init__"): {"asarray"},
    # new LayerNorm parameters: ones and zeros, on the CPU.
    ("tinymlm/nn/layers.py", "LayerNorm.__init__"): {"ones", "zeros"},
    # BERT's initialisation: LayerNorm 1 / 0 and zero biases, on the CPU, then copied to the
    # parameter's device.
    ("tinymlm/nn/bert.py", "init_bert_parameters"): {"ones", "zeros"},
    # the output bias of a new MLM head.
    ("tinymlm/nn/bert.py", "BertLMPredictionHead.__init__"): {"zeros"},
    # ELECTRA's new generator output bias, on the CPU.
    ("tinymlm/nn/electra.py", "ElectraGenerator.__init__"): {"zeros"},
    # which tokens the generator may sample: a host-side mask, made once.
    ("tinymlm/nn/electra.py", "ElectraForPretraining.__init__"): {"ones", "flatnonzero"},
    # the norm of an empty list of gradients: there is no device to put the 0 on.
    ("tinymlm/optim.py", "clip_grad_norm_"): {"zeros"},
}


def numpy_uses(
    source: str, filename: str = "<source>", allowed_in: dict | None = None
) -> list[tuple[int, str, str]]:
    """Every use of NumPy in ``source`` outside the allow-lists: (line, function, name).

    Catches ``np.exp(x)`` under any alias (``import numpy as anything``), bare references
    (``f = np.exp``), attribute chains (``np.add.at``, ``np.random.default_rng``) and
    ``from numpy import exp``.
    """
    allowed_in = ALLOWED_IN if allowed_in is None else allowed_in
    tree = ast.parse(source, filename)
    aliases = {"np", "numpy"}  # the usual names, even where the import is missing
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "numpy" or a.name.startswith("numpy."):
                    aliases.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "numpy":
            for a in node.names:
                if node.module != "numpy" or a.name not in ALLOWED_EVERYWHERE:
                    found.append((node.lineno, "<module>", f"from {node.module} import {a.name}"))

    class Visitor(ast.NodeVisitor):
        def __init__(self):
            self.scope: list[str] = []

        def _enter(self, node):
            self.scope.append(node.name)
            self.generic_visit(node)
            self.scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

        def visit_Attribute(self, node):
            if isinstance(node.value, ast.Name) and node.value.id in aliases:
                name = node.attr
                where = ".".join(self.scope) or "<module>"
                allowed = ALLOWED_EVERYWHERE | allowed_in.get((filename, where), set())
                if name not in allowed:
                    found.append((node.lineno, where, f"{node.value.id}.{name}"))
            self.generic_visit(node)

    Visitor().visit(tree)
    return found


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_checked_files_exist():
    names = {_relative(p) for p in CHECKED_FILES}
    expected = {"tinymlm/autograd.py", "tinymlm/ops.py", "tinymlm/optim.py"}
    expected |= {"tinymlm/nn/functional.py", "tinymlm/nn/bert.py", "tinymlm/nn/layers.py",
                 "tinymlm/nn/electra.py"}
    assert expected <= names


@pytest.mark.parametrize("path", CHECKED_FILES, ids=_relative)
def test_model_and_autograd_code_do_no_numpy_math(path):
    uses = numpy_uses(path.read_text(encoding="utf-8"), _relative(path))
    assert not uses, (
        f"{_relative(path)} uses NumPy directly, which breaks on CuPy arrays:\n"
        + "\n".join(f"  line {line} in {where}: {name}" for line, where, name in uses)
        + "\nuse xp = backend.get_array_module(x) (or a backend helper); if this is host-side "
        "setup by design, add it to ALLOWED_IN in this test with the reason"
    )


def test_every_allow_list_entry_is_still_used():
    """An entry whose function no longer uses the name is removed, so the list stays honest."""
    for (file, where), names in ALLOWED_IN.items():
        source = (ROOT / file).read_text(encoding="utf-8")
        uses = {name for _, w, name in numpy_uses(source, file, allowed_in={}) if w == where}
        assert {f"np.{n}" for n in names} <= uses, f"{file} {where}: stale entry {names}"


FUNCTION_WITH_NUMPY_MATH = """
import numpy as np
from tinymlm.autograd import Function


class Exp(Function):
    def forward(self, x):
        out = np.exp(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_tensors
        return g * out
"""


def test_the_scan_fails_on_np_exp_in_a_function():
    assert numpy_uses(FUNCTION_WITH_NUMPY_MATH) == [(8, "Exp.forward", "np.exp")]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import numpy as xnp\ndef f(x):\n    return xnp.sum(x)\n", "xnp.sum"),
        ("import numpy\ndef f(x):\n    return numpy.matmul(x, x)\n", "numpy.matmul"),
        ("import numpy as np\ndef f(t, i, v):\n    np.add.at(t, i, v)\n", "np.add"),
        (
            "import numpy as np\ndef f(s):\n    return np.random.default_rng(0).random(s)\n",
            "np.random",
        ),
        ("import numpy as np\nclass M:\n    exp = np.exp\n", "np.exp"),
        ("from numpy import where\n", "from numpy import where"),
    ],
)
def test_the_scan_sees_aliases_chains_and_imports(source, expected):
    assert [name for _, _, name in numpy_uses(source)] == [expected]


def test_the_scan_allows_dtypes_and_listed_host_side_setup():
    source = (
        "import numpy as np\n"
        "def f(x):\n    return x.astype(np.float32) * np.finfo(x.dtype).min\n"
        "class Tensor:\n    def __init__(self, data):\n        self.data = np.asarray(data)\n"
    )
    assert numpy_uses(source, "tinymlm/autograd.py") == []
    assert numpy_uses(source, "tinymlm/ops.py") == [(6, "Tensor.__init__", "np.asarray")]
