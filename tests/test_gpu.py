"""The GPU path: CuPy against the NumPy float64 reference, op by op and for the whole model;
50 training steps on the GPU against the same steps on the CPU; device moves, the seeded
device generator, and checkpoints that cross devices.

Every test is marked ``gpu`` and skipped, with the reason, where CuPy or a GPU is missing.
``TINYMLM_GPU_TESTS_ON_CPU=1`` runs them with NumPy float32 standing in for CuPy (the
comparisons, tolerances and training loops, not the GPU): it is how these tests were checked on
a machine without a GPU.

The reference is the same expression computed by NumPy in float64 on the CPU with the reference
path; the GPU computes in float32, with the reference path and with the fused kernels.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinymlm import backend, kernels
from tinymlm.autograd import Tensor
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertConfig, BertForMaskedLM
from tinymlm.nn.module import Parameter
from tinymlm.optim import AdamW, clip_grad_norm_, param_groups

ON_CPU = os.environ.get("TINYMLM_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (ON_CPU or backend.cuda_available()),
        reason="needs a CUDA GPU and CuPy (pip install -e '.[cuda13]' or '.[cuda12]')",
    ),
]
needs_cupy = pytest.mark.skipif(ON_CPU, reason="checks CuPy itself: no stand-in on the CPU")

# float32 against float64: elementwise |got - want| <= RTOL |want| + ATOL max(1, max |want|)
RTOL, ATOL = 1e-4, 1e-5
MODEL_RTOL, MODEL_ATOL = 2e-4, 2e-5  # a 2-layer model: gradients sum many float32 products
CURVE_RTOL = 1e-4  # 50 AdamW steps on two devices: float32 rounding compounds, slowly


def _sibling(name: str):
    """Another file of this folder as a module (its cases), without relying on pytest's
    import mode."""
    spec = importlib.util.spec_from_file_location(
        f"_gpu_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest, _ops_tests, _functional_tests = (
    _sibling(n) for n in ("conftest", "test_ops", "test_functional")
)


def to_device(a):
    return backend.to_device(a, DEVICE)


def _on_device(fn):
    """``fn`` with every NumPy array argument (masks, ids, targets in a case) moved first."""

    def call(*args, **kwargs):
        args = [to_device(a) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {k: to_device(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return call


device_lib = SimpleNamespace(**{k: _on_device(f) for k, f in vars(_conftest.ours_lib).items()})


def assert_close(got, want, what, rtol=RTOL, atol=ATOL):
    assert got.dtype == np.float32, f"{what}: float32 became {got.dtype}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def run_case(case, lib, arrays, move, weights_seed=7):
    """Output and input gradients of Σ case(...) ∘ w, as NumPy arrays."""
    inputs = [Tensor(move(a), requires_grad=True) for a in arrays]
    out = case(lib, *inputs)
    weights = np.random.default_rng(weights_seed).standard_normal(out.shape).astype(out.dtype)
    (out * Tensor(move(weights))).sum().backward()
    return out.numpy(), [backend.to_numpy(t.grad) for t in inputs]


def check_case(case, specs, mode):
    arrays = _conftest._make_arrays(np.random.default_rng(1234), specs)  # float64
    with kernels.use_kernels("reference"):
        want_out, want_grads = run_case(case, _conftest.ours_lib, arrays, lambda a: a)
    with kernels.use_kernels(mode):
        got_out, got_grads = run_case(
            case, device_lib, [a.astype(np.float32) for a in arrays], to_device
        )
    assert_close(got_out, want_out, "value")
    for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert_close(g, w, f"gradient of input {i}")


# --- every operation ------------------------------------------------------------------------

# Dropout draws from the device's own generator (CuPy's numbers differ from NumPy's for the
# same seed), so those cases have no float64 twin: test_dropout_* below covers them.
FUNCTIONAL_CASES = [c for c in _functional_tests.CASES if "dropout" not in c[0]]


@pytest.mark.parametrize(
    "name, case, specs", _ops_tests.CASES, ids=[c[0] for c in _ops_tests.CASES]
)
def test_op_matches_the_float64_reference(name, case, specs):
    check_case(case, specs, "reference")


@pytest.mark.parametrize("mode", ["reference", "numba"])
@pytest.mark.parametrize(
    "name, case, specs", FUNCTIONAL_CASES, ids=[c[0] for c in FUNCTIONAL_CASES]
)
def test_functional_op_matches_the_float64_reference(name, case, specs, mode):
    if ON_CPU and mode == "numba":
        pytest.skip("the CUDA kernels need a GPU")
    check_case(case, specs, mode)


# --- the whole model --------------------------------------------------------------------------


def tiny_config(vocab: int = 120) -> BertConfig:
    return BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def make_batch(rng, batch=4, seq=16, vocab=120):
    """Right-padded ids (B, S), their mask and labels (~25% of real tokens, at least one)."""
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    lengths[0] = seq
    real = np.arange(seq)[None, :] < lengths[:, None]  # (B, S)
    ids = np.where(real, rng.integers(5, vocab, size=(batch, seq)), 0)
    chosen = real & (rng.random((batch, seq)) < 0.25)
    chosen[:, 1] = True  # every sequence predicts at least one token
    labels = np.where(chosen, ids, -100)
    ids = np.where(chosen & (rng.random((batch, seq)) < 0.8), 4, ids)  # 4 plays [MASK]
    return ids, real.astype(np.int64), labels


def forward_backward(model, ids, mask, labels):
    out = model(ids, mask, labels=labels)
    logits = out.logits.numpy()  # before backward(): a fused loss may reuse the buffer
    out.loss.backward()
    grads = {name: backend.to_numpy(p.grad) for name, p in model.named_parameters()}
    return out.loss.numpy(), logits, grads


@pytest.mark.parametrize("mode", ["reference", "numba"])
def test_whole_model_matches_the_float64_reference(mode):
    if ON_CPU and mode == "numba":
        pytest.skip("the CUDA kernels need a GPU")
    backend.manual_seed(0)
    model = BertForMaskedLM(tiny_config())
    reference = BertForMaskedLM(tiny_config())
    reference.load_state_dict(model.state_dict())
    reference.to(np.float64)
    ids, mask, labels = make_batch(np.random.default_rng(5))
    with kernels.use_kernels("reference"):
        want = forward_backward(reference, ids, mask, labels)
    model.to(DEVICE)
    with kernels.use_kernels(mode):
        got = forward_backward(model, ids, mask, labels)  # NumPy ids go to the device inside
    assert_close(got[0], want[0], "loss", MODEL_RTOL, MODEL_ATOL)
    assert_close(got[1], want[1], "logits", MODEL_RTOL, MODEL_ATOL)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        assert_close(got[2][name], want[2][name], f"gradient of {name}", MODEL_RTOL, MODEL_ATOL)


def train_losses(device: str, steps: int = 50) -> np.ndarray:
    """Losses of ``steps`` AdamW steps over four fixed batches (the model memorises them)."""
    backend.manual_seed(0)
    model = BertForMaskedLM(tiny_config())
    model.to(device)
    optimizer = AdamW(param_groups(model, 0.01), lr=3e-3)
    rng = np.random.default_rng(11)
    batches = [make_batch(rng) for _ in range(4)]  # built on the host, as train.py does
    losses = []
    for step in range(steps):
        ids, mask, labels = batches[step % len(batches)]
        out = model(ids, mask, labels=labels)
        out.loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.data)  # stays on the device: no sync inside the loop
    return np.array([float(loss) for loss in losses])


def test_fifty_training_steps_follow_the_cpu_loss_curve():
    cpu = train_losses("cpu")
    gpu = train_losses(DEVICE)
    assert cpu[-5:].mean() < 0.8 * cpu[:5].mean(), "the run must learn for the curve to mean much"
    assert np.isfinite(gpu).all()
    np.testing.assert_allclose(gpu, cpu, rtol=CURVE_RTOL)


# --- device moves, the device generator, backend pieces --------------------------------------


def test_tensor_moves_to_the_device_and_back():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = Tensor(a, requires_grad=True).to(DEVICE)
    assert t.device == DEVICE and t.requires_grad and t.dtype == np.float32
    back = t.numpy()
    assert isinstance(back, np.ndarray) and (back == a).all()
    assert t.to("cpu").device == "cpu"


def test_model_to_device_keeps_tied_weights_and_the_optimizer():
    backend.manual_seed(0)
    model = BertForMaskedLM(tiny_config())
    optimizer = AdamW(param_groups(model, 0.01), lr=1e-3)  # made before the move, as train.py
    model.to(DEVICE)
    words = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions._decoder_weight is words
    assert all(p.device == DEVICE for p in model.parameters())
    ids, mask, labels = make_batch(np.random.default_rng(2))
    model(ids, mask, labels=labels).loss.backward()
    before = words.numpy()
    optimizer.step()
    assert words.device == DEVICE and not np.array_equal(words.numpy(), before)


@needs_cupy
def test_mixing_numpy_and_cupy_says_what_to_call():
    on_gpu = Tensor(np.ones(3, dtype=np.float32)).to("cuda")
    with pytest.raises(backend.DeviceMismatchError, match=r'\.to\("cuda"\)'):
        on_gpu + np.ones(3, dtype=np.float32)


@needs_cupy
def test_erf_and_scatter_add_on_the_gpu():
    x = np.linspace(-4, 4, 101, dtype=np.float32)
    got = backend.erf(to_device(x))
    assert got.dtype == np.float32
    np.testing.assert_allclose(
        backend.to_numpy(got), [math.erf(v) for v in x.astype(np.float64)], rtol=0, atol=4e-7
    )
    target = to_device(np.zeros((4, 2), dtype=np.float32))
    rows = np.array([0, 3, 0, 0, 2])
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    backend.scatter_add(target, to_device(rows), to_device(values))
    want = np.zeros((4, 2), dtype=np.float32)
    np.add.at(want, rows, values)
    np.testing.assert_array_equal(backend.to_numpy(target), want)


@needs_cupy
def test_dropout_on_the_gpu_is_seeded_and_keeps_the_expectation():
    x = Tensor(to_device(np.ones((256, 256), dtype=np.float32)), requires_grad=True)
    backend.manual_seed(3)
    a = F.dropout(x, 0.25)
    backend.manual_seed(3)
    b = F.dropout(x, 0.25)
    backend.manual_seed(4)
    c = F.dropout(x, 0.25)
    assert a.device == "cuda" and a.dtype == np.float32
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    values = a.numpy()
    assert set(np.unique(values).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((values != 0).mean() - 0.75) < 0.01
    a.backward(to_device(np.ones((256, 256), dtype=np.float32)))
    np.testing.assert_array_equal(backend.to_numpy(x.grad), values)  # dx = mask / (1 - p)


@needs_cupy
def test_attention_dropout_on_the_gpu_is_seeded():
    rng = np.random.default_rng(0)
    q, k, v = (
        Tensor(to_device(rng.standard_normal((2, 2, 8, 4), dtype=np.float32))) for _ in range(3)
    )
    outs = []
    for seed in (5, 5, 6):
        backend.manual_seed(seed)
        outs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=0.3).numpy())
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


# --- the launch path on the device ---------------------------------------------------------


@needs_cupy
def test_kernels_run_in_order_on_cupys_current_stream():
    """On a non-default CuPy stream, each kernel reads what the CuPy work queued before it on
    that stream wrote, with no synchronisation in between: the launches use CuPy's stream."""
    cp = backend.cupy_module()
    from tinymlm.kernels import attention, launch
    from tinymlm.kernels import cross_entropy as ce

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 3000)).astype(np.float32)  # (M, V)
    targets = rng.integers(0, 3000, 64)
    q = rng.standard_normal((2, 3, 50, 32)).astype(np.float32)  # (B, H, S, d)
    with cp.cuda.Stream(non_blocking=True) as stream:
        assert int(launch.current_stream()) == stream.ptr
        x = cp.asarray(logits) * np.float32(3.0)  # queued on the stream, then read at once
        loss, lse = ce.cuda_forward(x, cp.asarray(targets))
        d = cp.asarray(q) * np.float32(0.5)
        out, _ = attention.attention_forward(d, d, d, cp.asarray([50, 7]), 0.25)
        stream.synchronize()
    scaled = 3.0 * logits.astype(np.float64)
    m = scaled.max(axis=1)
    want_lse = m + np.log(np.exp(scaled - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(backend.to_numpy(lse), want_lse, rtol=1e-5)
    np.testing.assert_allclose(
        backend.to_numpy(loss), want_lse - scaled[np.arange(64), targets], rtol=1e-4, atol=1e-4
    )
    assert np.isfinite(backend.to_numpy(out)).all()


@needs_cupy
def test_adamw_kernel_equals_the_cupy_operator_update():
    """The fused CUDA AdamW against the reference path's CuPy operators, five steps."""
    cp = backend.cupy_module()
    from tinymlm.kernels import adamw

    rng = np.random.default_rng(1)
    start = rng.standard_normal((257, 33)).astype(np.float32)
    grads = [rng.standard_normal(start.shape).astype(np.float32) for _ in range(5)]
    reference = Parameter(cp.asarray(start))
    optimizer = AdamW([reference], lr=1e-3, weight_decay=0.01)
    with kernels.use_kernels("reference"):
        for g in grads:
            reference.grad = cp.asarray(g)
            optimizer.step()
    p = cp.asarray(start)
    m, v = cp.zeros(start.shape, np.float32), cp.zeros(start.shape, np.float32)
    for t, g in enumerate(grads, start=1):
        assert adamw.adamw_step(p, cp.asarray(g), m, v, lr=1e-3, beta1=0.9, beta2=0.999,
                                eps=1e-8, weight_decay=0.01, step_size=1e-3 / (1 - 0.9**t),
                                correction2=math.sqrt(1 - 0.999**t))  # fmt: skip
    np.testing.assert_allclose(backend.to_numpy(p), backend.to_numpy(reference.data), rtol=1e-6,
                               atol=1e-7)  # fmt: skip


# --- checkpoints across devices -------------------------------------------------------------


def test_a_model_saved_on_one_device_loads_exactly_on_the_other(tmp_path):
    backend.manual_seed(0)
    model = BertForMaskedLM(tiny_config())
    model.to(DEVICE)
    model.save_pretrained(tmp_path / "from_device")
    on_cpu = BertForMaskedLM.from_pretrained(tmp_path / "from_device")
    assert on_cpu.device == "cpu"
    on_cpu.save_pretrained(tmp_path / "from_cpu")
    back = BertForMaskedLM.from_pretrained(tmp_path / "from_cpu", device=DEVICE)
    assert back.device == DEVICE
    for (name, p), (_, q), (_, r) in zip(
        model.named_parameters(), on_cpu.named_parameters(), back.named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(q.numpy(), p.numpy(), err_msg=name)
        np.testing.assert_array_equal(r.numpy(), p.numpy(), err_msg=name)


def test_optimizer_state_crosses_devices_exactly():
    backend.manual_seed(0)
    model = BertForMaskedLM(tiny_config()).to(DEVICE)
    optimizer = AdamW(param_groups(model, 0.01), lr=1e-3)
    ids, mask, labels = make_batch(np.random.default_rng(3))
    model(ids, mask, labels=labels).loss.backward()
    optimizer.step()
    state = optimizer.state_dict()  # NumPy arrays, from the device
    assert all(isinstance(a, np.ndarray) for a in state["arrays"].values())
    cpu_model = BertForMaskedLM(tiny_config())
    cpu_optimizer = AdamW(param_groups(cpu_model, 0.01), lr=1e-3)
    cpu_optimizer.load_state_dict(state)
    again = cpu_optimizer.state_dict()
    assert again["step"] == state["step"] and again["arrays"].keys() == state["arrays"].keys()
    for key, a in state["arrays"].items():
        np.testing.assert_array_equal(again["arrays"][key], a, err_msg=key)


@pytest.mark.slow
def test_training_command_resumes_across_devices(tmp_path):
    """``--device cuda`` stopped after step 2 and resumed on the CPU, and the reverse: both
    finish, and end with the same weights to float32 accuracy."""
    from tinymlm import train
    from tinymlm.data import tinyworld

    # tinyworld's text as a corpus file with its vocabulary: no vocabulary training, and no
    # knowledge report at the end (that is tinyworld-only), so the four runs stay quick.
    corpus, vocab = tmp_path / "corpus.txt", tmp_path / "vocab.txt"
    corpus.write_text("\n\n".join(tinyworld.generate_documents(150, seed=0)) + "\n")
    vocab.write_text("\n".join(tinyworld.vocabulary()) + "\n")
    common = [
        "--corpus",
        str(corpus),
        "--vocab",
        str(vocab),
        "--model-size",
        "tiny",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--eval-every",
        "100",
        "--save-every",
        "100",
        "--log-every",
        "1",
    ]
    runs = []
    for first, second in ((DEVICE, "cpu"), ("cpu", DEVICE)):
        out = tmp_path / f"run{len(runs)}-{first}-then-{second}"
        argv = [*common, "--device", first, "--stop-after", "2", "--out", str(out)]
        assert train.main(argv) == 0
        assert train.main(["--resume", str(out), "--device", second]) == 0
        runs.append(BertForMaskedLM.from_pretrained(out).state_dict())
    a, b = runs
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
