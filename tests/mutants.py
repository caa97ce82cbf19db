"""Mutation testing by hand: can the tests tell a broken engine from a working one?

    python tests/mutants.py                 # every mutant (minutes; not part of CI)
    python tests/mutants.py --only 3 7      # some of them
    python tests/mutants.py --out benchmarks/results/mutants.md

Each mutant changes one line of the engine, the fused Functions, the masking collator or the
kernels into a plausible bug (a sign, a forgotten term, an aliasing shortcut). The source tree
is copied once into a temporary folder; each mutant is applied there, the FAST subset of the
tests runs against it (``-x``, at most 60 s), and the line is restored. A mutant is *killed*
when a test fails; one that survives means the tests cannot see that bug. The copy keeps its
Numba cache between mutants, so only the mutated module's kernels are compiled again.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A named, fast subset of the suite (well under a minute on 2 cores once Numba's cache is warm).
FAST = [
    "tests/test_autograd.py",
    "tests/test_ops.py",
    "tests/test_functional.py",
    "tests/test_gradcheck.py",
    "tests/test_masking.py",
    "tests/test_cpu_kernels.py",
    "tests/test_kernel_cross_entropy.py::test_cpu_kernels_match_the_reference",
    "tests/test_kernel_cross_entropy.py::test_function_loss_and_gradient",
    "tests/test_kernel_cross_entropy.py::test_the_linear_loss_gives_the_linear_then_loss_gradients",
    "tests/test_fused_reuse.py::test_fused_function_is_invisible",
    "tests/test_fused_reuse.py::test_out_logits_survive_backward_and_can_be_used_again",
    "tests/test_optim.py",
]

# (file, the line as it is, the line as the mutant has it, what bug it stands for)
MUTANTS = [
    ("tinymlm/autograd.py", "                    grads[key] += pg",
     "                    grads[key] = pg", "fan-out: a second gradient replaces the first"),
    ("tinymlm/autograd.py", "            self.grad = g if g_is_owned else g.copy()",
     "            self.grad = g", "a leaf's .grad aliases an array the engine still uses"),
    ("tinymlm/autograd.py", "        for node in reversed(_topological_order(self)):",
     "        for node in _topological_order(self):", "the graph walked leaves-first"),
    ("tinymlm/autograd.py",
     "    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)",
     "    stretched = ()", "broadcast axes of size 1 not summed back"),
    ("tinymlm/ops.py", "        return g, (-g if self.needs_input_grad[1] else None)",
     "        return g, (g if self.needs_input_grad[1] else None)", "a - b: wrong sign for b"),
    ("tinymlm/ops.py", "        gb = -g * a / (b * b) if self.needs_input_grad[1] else None",
     "        gb = -g * a / b if self.needs_input_grad[1] else None", "a / b: d/db off by 1/b"),
    ("tinymlm/ops.py", "        return g * (1 - out * out)",
     "        return g * (1 - out)", "tanh' = 1 - tanh, not 1 - tanh²"),
    ("tinymlm/ops.py", "        return g / (2 * out)",
     "        return g / out", "sqrt' missing its factor 1/2"),
    ("tinymlm/nn/functional.py",
     "        return p * (g - (g * p).sum(axis=self.axis, keepdims=True))",
     "        return p * (g - g.sum(axis=self.axis, keepdims=True))", "softmax: g·p term lost"),
    ("tinymlm/nn/functional.py",
     "        return g - _xp(y).exp(y) * g.sum(axis=self.axis, keepdims=True)",
     "        return g - _xp(y).exp(y) * g.mean(axis=self.axis, keepdims=True)",
     "log-softmax: mean for sum"),
    ("tinymlm/nn/functional.py", "        return g * (cdf + x * pdf)",
     "        return g * (cdf - x * pdf)", "GELU': wrong sign on x φ(x)"),
    ("tinymlm/nn/functional.py",
     "                - xhat * (ghat * xhat).mean(axis=axes, keepdims=True)",
     "                - 0 * xhat", "layer norm: the variance's term dropped"),
    ("tinymlm/nn/functional.py", "        rstd = 1.0 / _xp(x).sqrt(var + eps)",
     "        rstd = 1.0 / (_xp(x).sqrt(var) + eps)", "layer norm: eps outside the root"),
    ("tinymlm/nn/functional.py",
     "        self.inv_count = 1.0 / xp.maximum(counted.sum(), 1).astype(logits.dtype)",
     "        self.inv_count = 1.0 / xp.asarray(max(counted.size, 1)).astype(logits.dtype)",
     "cross-entropy: mean over ignored rows too"),
    ("tinymlm/nn/functional.py",
     "        gk = (xp.swapaxes(gs, -1, -2) @ q) * self.scale  # (B, h, S, d)",
     "        gk = xp.swapaxes(gs, -1, -2) @ q  # (B, h, S, d)", "attention: dK without scale"),
    ("tinymlm/nn/functional.py", "            gw[self.padding_idx] = 0",
     "            pass", "embedding: the padding row learns"),
    ("tinymlm/nn/functional.py",
     "        self.scaled_mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))  # (...) same shape as x",
     "        self.scaled_mask = keep.astype(x.dtype)  # (...) same shape as x",
     "dropout without the 1/(1-p) rescaling"),
    ("tinymlm/data/masking.py",
     "        to_mask = selected & (decision < self.mask_replace_prob)",
     "        to_mask = selected & (decision < self.random_replace_prob)",
     "80/10/10 becomes 10/10/80"),
    ("tinymlm/data/masking.py", "        masked[to_random] = self.ordinary_ids[picks]",
     "        masked[to_random] = picks", "random replacements may be special tokens"),
    ("tinymlm/data/masking.py",
     "        candidates = (attention_mask != 0) & ~self.is_special[ids]  # (B, S) may be selected",
     "        candidates = attention_mask != 0  # (B, S) may be selected",
     "special tokens can be masked"),
    ("tinymlm/data/masking.py",
     "        k = np.minimum(self.max_predictions, "
     "np.maximum(1, np.round(self.mlm_probability * n)))",
     "        k = np.minimum(self.max_predictions, np.round(self.mlm_probability * n))",
     "exact count: a short row may get no prediction"),
    ("tinymlm/kernels/cross_entropy.py", "        row[t] -= scale",
     "        row[t] += scale", "fused CE (CPU): onehot added instead of subtracted"),
    ("tinymlm/kernels/cross_entropy.py",
     "        loss[i] = 0.0 if t == ignore_index else lse[i] - row[t]",
     "        loss[i] = lse[i] - row[t]", "fused CE (CPU): ignored rows counted"),
    ("tinymlm/kernels/cross_entropy.py",
     "        return rows_backward(logits, targets, lse, count, grad, self.ignore_index), None",
     "        return rows_backward(logits, targets, lse, count, grad, self.ignore_index, "
     "out=logits), None", "fused CE writes its gradient over logits it does not own"),
    ("tinymlm/kernels/cpu_fused.py",
     "                gx[r, c] = rs * (gr[c] * w[c] - mean_gh - xr[c] * mean_ghx)",
     "                gx[r, c] = rs * (gr[c] * w[c] - mean_gh)",
     "fused layer norm: the variance's term dropped"),
    ("tinymlm/kernels/cpu_fused.py", "        gx[i] = g[i] * (cdf[i] + xi * pdf)",
     "        gx[i] = g[i] * cdf[i]", "fused GELU: derivative of Φ forgotten"),
    ("tinymlm/kernels/cpu_fused.py",
     "        p[i] = p[i] * decay_factor - step_size * "
     "(mi / (np.sqrt(vi) * inv_correction2 + eps))",
     "        p[i] = p[i] * decay_factor - step_size * (mi / (np.sqrt(vi) + eps))",
     "fused AdamW: second-moment bias correction lost"),
]


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "runs", "__pycache__", "*.ipynb", "notebooks",
                                    ".ruff_cache", ".pytest_cache")
    for name in ("tinymlm", "tests", "kernels"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


# The tests of the mutated module run first within the subset, so that the cap is spent on them.
OWN_TESTS = {
    "tinymlm/autograd.py": "tests/test_autograd.py",
    "tinymlm/ops.py": "tests/test_ops.py",
    "tinymlm/nn/functional.py": "tests/test_functional.py",
    "tinymlm/data/masking.py": "tests/test_masking.py",
    "tinymlm/kernels/cross_entropy.py": "tests/test_kernel_cross_entropy.py",
    "tinymlm/kernels/cpu_fused.py": "tests/test_cpu_kernels.py",
}


def subset_for(path: str | None) -> list[str]:
    own = OWN_TESTS.get(path, "-")
    return sorted(FAST, key=lambda test: not test.startswith(own))  # a stable sort


def run_tests(tree: Path, timeout: int, path: str | None = None) -> tuple[bool, str, float]:
    """(killed, what killed it, seconds) for the subset, the tests of ``path`` first."""
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(tree / ".numba_cache"))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf",
               *subset_for(path)]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"(survived: no failure within {timeout} s)", time.perf_counter() - start
    seconds = time.perf_counter() - start
    failed = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.M)
    if result.returncode == 0:
        return False, "(survived: every test passed)", seconds
    if failed:
        return True, ", ".join(failed), seconds
    return True, f"(exit {result.returncode}: {result.stdout.strip().splitlines()[-1]})", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=int, nargs="*", help="mutant numbers (1-based)")
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()
    chosen = args.only or range(1, len(MUTANTS) + 1)

    rows, survivors = [], 0
    with tempfile.TemporaryDirectory(prefix="tinymlm-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        killed, note, seconds = run_tests(tree, timeout=600)  # also warms Numba's cache
        if killed:
            print(f"the unmutated tree fails its own tests: {note}", file=sys.stderr)
            return 2
        print(f"unmutated: all pass ({seconds:.0f} s, cache warmed)", flush=True)
        for number in chosen:
            path, line, mutant, bug = MUTANTS[number - 1]
            source = (tree / path).read_text()
            if source.count(line + "\n") != 1:
                print(f"#{number} is stale: its line is not in {path} exactly once",
                      file=sys.stderr)
                return 2
            (tree / path).write_text(source.replace(line + "\n", mutant + "\n"))
            try:
                killed, note, seconds = run_tests(tree, args.timeout, path)
            finally:
                (tree / path).write_text(source)
            survivors += not killed
            verdict = "killed" if killed else "SURVIVED"
            print(f"#{number:2d} {verdict:8s} {seconds:5.1f} s  {path}: {bug}\n"
                  f"      by {note}", flush=True)
            rows.append((number, path, bug, verdict, note, seconds))

    print(f"{len(rows) - survivors} of {len(rows)} mutants killed")
    if args.out:
        write_report(Path(args.out), rows)
    return 1 if survivors else 0


def write_report(path: Path, rows) -> None:
    from tinymlm.fileio import atomic_write_text

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    lines = [
        "# Mutation testing: every hand-written mutant must be killed",
        "",
        f"- date: {datetime.date.today()}, commit: {commit}",
        "- command: `python tests/mutants.py --out benchmarks/results/mutants.md`",
        f"- the fast subset: {', '.join(f'`{t}`' for t in FAST)}",
        "",
        "| # | file | the bug | verdict | killed by | s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for number, file, bug, verdict, note, seconds in rows:
        lines.append(f"| {number} | `{file}` | {bug} | {verdict} | {note} | {seconds:.0f} |")
    killed = sum(r[3] == "killed" for r in rows)
    lines += ["", f"{killed} of {len(rows)} mutants killed."]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
