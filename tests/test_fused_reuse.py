"""Every fused Function is invisible: second consumers of its inputs and outputs get the
reference path's gradients, and backward() changes no tensor the user holds (float64).

The property is in ``tests/reuse_property.py``; the CUDA kernels go through the same check
under the simulator (``tests/sim_fused_reuse.py``, run in its own process below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reuse_property import problems

from tinymlm import BertConfig, BertForMaskedLM
from tinymlm.kernels import use_kernels
from tinymlm.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]


def in_mode(mode, fn):
    def run(*xs):
        with use_kernels(mode):
            return fn(*xs)

    return run


def padded_mask(B, S):
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, S - 2 :] = 0  # ragged
    if B > 2:
        mask[2] = 0  # a sequence with no real token
    return mask


def dropout_attention(q, k, v):
    generator = np.random.default_rng(3)  # the same draws on both paths
    return F.scaled_dot_product_attention(
        q, k, v, padded_mask(3, 5), dropout_p=0.2, generator=generator
    )


def causal_attention(q, k, v, dropout_p=0.0):
    generator = np.random.default_rng(3)
    return F.scaled_dot_product_attention(
        q, k, v, padded_mask(3, 5), dropout_p=dropout_p, generator=generator, is_causal=True
    )


TARGETS = np.array([3, -100, 0, 6, -100, 2])  # ignored rows included

CASES = {
    "gelu": (lambda x: F.gelu(x), [(4, 7)], "FusedGELU"),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, 6, w, b, eps=1e-5), [(5, 6), (6,), (6,)],
                   "FusedLayerNorm"),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, padded_mask(3, 5)),
                  [(3, 2, 5, 4)] * 3, "FusedAttention"),
    "attention_dropout": (dropout_attention, [(3, 2, 5, 4)] * 3, "FusedAttention"),
    "attention_causal": (causal_attention, [(3, 2, 5, 4)] * 3, "FusedAttention"),
    "attention_causal_dropout": (lambda q, k, v: causal_attention(q, k, v, dropout_p=0.2),
                                 [(3, 2, 5, 4)] * 3, "FusedAttention"),
    "cross_entropy": (lambda x: F.cross_entropy(x, TARGETS), [(6, 9)],
                      "FusedCrossEntropy"),
    "linear_cross_entropy": (
        lambda x, w, b: F.linear_cross_entropy(x, w, b, TARGETS), [(6, 5), (9, 5), (9,)],
        "FusedLinearCrossEntropy"),
    "linear_cross_entropy_no_bias": (
        lambda x, w: F.linear_cross_entropy(x, w, None, TARGETS), [(6, 5), (9, 5)],
        "FusedLinearCrossEntropy"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_function_is_invisible(name, rng):
    fn, shapes, fused_type = CASES[name]
    arrays = [rng.standard_normal(shape) for shape in shapes]
    found = problems(in_mode("numba", fn), in_mode("reference", fn), arrays, fused_type)
    assert not found, found


def test_embedding_gradient_kernel_is_invisible(rng):
    ids = np.array([[1, 3, 3], [0, 3, 5]])  # a repeated id; 0 is the padding row

    def embed(w):
        return F.embedding(ids, w, padding_idx=0)

    found = problems(in_mode("numba", embed), in_mode("reference", embed),
                     [rng.standard_normal((6, 4))], "Embedding")
    assert not found, found


def test_the_check_catches_a_function_that_writes_into_its_input(rng, monkeypatch):
    # The property must fail for the bug it exists to catch: a GELU backward that reuses the
    # saved input as its output buffer (as an in-place kernel would).
    from tinymlm.kernels import cpu_fused

    original = cpu_fused.FusedGELU.backward

    def writes_into_its_input(self, g):
        gx = original(self, g)
        flat = self.saved_tensors[0]
        flat[...] = gx.reshape(-1)
        return flat.reshape(gx.shape)

    monkeypatch.setattr(cpu_fused.FusedGELU, "backward", writes_into_its_input)
    fn, shapes, fused_type = CASES["gelu"]
    found = problems(in_mode("numba", fn), in_mode("reference", fn),
                     [rng.standard_normal(s) for s in shapes], fused_type)
    assert any("changed held tensors" in f for f in found), found


# --- the model: out.logits after backward, and a loss that uses them again ----------------------

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _model_grads(mode, dtype, state, batch, extra_term: bool):
    model = BertForMaskedLM(CONFIG)
    for n, p in model.named_parameters():
        p.data = state[n].astype(dtype)
    with use_kernels(mode):
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
        before = out.logits.numpy()
        loss = out.loss + 0.01 * (out.logits * out.logits).sum() if extra_term else out.loss
        loss.backward()
    assert np.array_equal(out.logits.data, before), "backward() changed out.logits"
    return {n: p.grad for n, p in model.named_parameters()}, float(loss.item())


@pytest.fixture
def mlm_batch(rng):
    ids = rng.integers(5, 40, (3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, 5:] = 0
    labels = np.full((3, 7), -100)
    labels[0, [1, 4]] = ids[0, [1, 4]]
    labels[2, 6] = ids[2, 6]
    state = {n: rng.standard_normal(p.shape) * 0.3 for n, p in
             BertForMaskedLM(CONFIG).named_parameters()}
    return dict(input_ids=ids, attention_mask=mask, labels=labels), state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_logits_survive_backward_and_can_be_used_again(mlm_batch, dtype):
    batch, state = mlm_batch
    fused, _ = _model_grads("auto", dtype, state, batch, extra_term=True)
    reference, _ = _model_grads("reference", dtype, state, batch, extra_term=True)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    # Relative to the largest gradient element of the model: some are zero by symmetry (the
    # key bias: a softmax ignores a shift common to all its scores) and hold only rounding.
    scale = max(np.abs(g).max() for g in reference.values())
    for name, want in reference.items():
        err = np.abs(fused[name] - want).max() / scale
        assert err <= tol, (name, err)


def test_reused_logits_loss_equals_transformers(mlm_batch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    batch, state = mlm_batch
    ours, our_loss = _model_grads("auto", np.float64, state, batch, extra_term=True)
    hf_cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    hf = transformers.BertForMaskedLM(hf_cfg).double().eval()
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.from_numpy(value))
    out = hf(input_ids=torch.from_numpy(batch["input_ids"]),
             attention_mask=torch.from_numpy(batch["attention_mask"]),
             labels=torch.from_numpy(batch["labels"]))
    # HF predicts every position; the same loss term over the predicted rows only:
    predicted = torch.from_numpy(batch["labels"].reshape(-1) != -100)
    logits = out.logits.reshape(-1, 40)[predicted]  # (M, V)
    loss = out.loss + 0.01 * (logits * logits).sum()
    loss.backward()
    assert abs(loss.item() - our_loss) <= 1e-12 * abs(our_loss)
    wants = {name: p.grad.numpy() for name, p in params.items() if name in ours}
    assert len(wants) == len(ours)
    scale = max(np.abs(g).max() for g in wants.values())  # as above: some are zero by symmetry
    for name, want in wants.items():
        err = np.abs(ours[name] - want).max() / scale
        assert err <= 1e-9, (name, err)


def test_the_loss_alone_reuses_no_user_array(mlm_batch):
    batch, state = mlm_batch
    model = BertForMaskedLM(CONFIG)
    for n, p in model.named_parameters():
        p.data = state[n].copy()
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], return_logits=False)
    assert out.logits is None
    assert type(out.loss._ctx).__name__ == "FusedLinearCrossEntropy"
    with_logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"])
    assert out.loss.item() == with_logits.loss.item()  # the same numbers, bit for bit


def test_a_second_backward_through_the_fused_loss_recomputes_its_logits(rng):
    x, w = rng.standard_normal((6, 5)), rng.standard_normal((9, 5))
    from tinymlm import Tensor

    def grads(mode):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        with use_kernels(mode):
            loss = F.linear_cross_entropy(xt, wt, None, TARGETS)
        loss.backward(retain_graph=True)
        loss.backward()
        return xt.grad, wt.grad

    for got, want in zip(grads("numba"), grads("reference")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_cuda_kernels_are_invisible_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    script = ROOT / "tests" / "sim_fused_reuse.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "checked 5 fused CUDA paths" in result.stdout
