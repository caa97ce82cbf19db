"""The kernel lab (``kernels/``) is run, not only read: every variant of every lab file is
validated against its float64 reference under Numba's CUDA simulator, on tiny shapes that
still cover what breaks kernels (ragged lengths, a sequence with no real token, sizes that are
no multiple of the tile or block, large outliers, outputs NaN-poisoned before the launch).

Each lab file's ``__main__`` does that validation itself when ``NUMBA_ENABLE_CUDASIM=1``
(it must be set before Numba is imported: a process of its own); it exits non-zero on any
mismatch and prints one "ok" line per variant and case. The lab uses only public names of the
package.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "kernels"

# lab file -> the variants it must validate (a variant deleted from the lab is deleted here too,
# with the reason in the lab file's header)
VARIANTS = {
    "cross_entropy.py": ["v1", "v2", "v3", "v4", "v5"],
    "attention.py": ["v1", "v2", "v3", "v4", "v5"],
}


def test_every_lab_file_is_covered():
    assert sorted(p.name for p in LAB.glob("*.py")) == sorted(VARIANTS)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def simulated(request):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(LAB / request.param)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    return request.param, proc


def test_every_variant_matches_the_reference_under_the_simulator(simulated):
    name, proc = simulated
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if "FAILED" in line]
    for variant in VARIANTS[name]:
        checked = [line for line in lines if re.search(rf"\b{variant}\b", line)]
        assert checked and all(line.rstrip().endswith("ok") for line in checked), (
            f"{name}: variant {variant} was not validated:\n{proc.stdout}"
        )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_lab_uses_only_public_names_of_the_package(name):
    tree = ast.parse((LAB / name).read_text())
    aliases = set()  # names the lab binds to tinymlm modules
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinymlm"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    private.append(f"from {node.module} import {alias.name}")
                aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
        ):
            private.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    assert not private, f"{name} reaches into the package's private names: {private}"
