"""The real (non-simulator) launch branch of every CUDA kernel, on a machine without a GPU.

Under Numba's CUDA simulator the kernels run as ``kernel[grid, block](*args)`` on NumPy
arrays; on a GPU they run as ``kernel[grid, block, stream](*args)`` on CuPy arrays, on a Numba
handle of CuPy's current stream. The simulator never reaches the second branch, which is how a
``with cuda.external_stream(ptr) as stream:`` (numba-cuda's Stream is no context manager) once
shipped. Here that branch runs with three fakes:

* ``cupy``: a module whose arrays (:class:`FakeCupyArray`) wrap NumPy arrays and whose type
  lives in a ``cupy`` module, so ``backend.is_cupy_array`` says yes; its current stream has the
  pointer :data:`STREAM_POINTER`;
* ``numba.cuda.external_stream``: returns a :class:`FakeStream`, a bare handle without
  ``__enter__``/``__exit__``, as numba-cuda's is;
* the kernels: each kernel factory is wrapped so that ``kernel[grid, block, stream](*args)``
  records the launch instead of compiling.

Each kernel's launch helper must pass the stream made from CuPy's pointer, the grid and the
block the kernel was bounded to, and CuPy arrays.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from numba import cuda

from tinymlm.kernels import adamw, attention, launch
from tinymlm.kernels import cross_entropy as ce

STREAM_POINTER = 0xC0FFEE


class FakeCupyArray:
    """A NumPy array dressed as a CuPy one: attribute access and methods go to the array,
    array results come back wrapped."""

    __module__ = "cupy._fake"  # backend.is_cupy_array looks at the type's module

    def __init__(self, array):
        self.array = np.asarray(array)

    def __getattr__(self, name):
        return _wrap(getattr(self.array, name))

    def __getitem__(self, index):
        return _wrap(self.array[_unwrap(index)])

    def __len__(self):
        return len(self.array)

    def __bool__(self):  # CuPy waits for the device here; this fake has nothing to wait for
        return bool(self.array)

    def __repr__(self):
        return f"FakeCupyArray({self.array!r})"


def _operator(name):
    def apply(self, *others):
        return _wrap(getattr(self.array, name)(*(_unwrap(o) for o in others)))

    return apply


for _name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__",
              "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__neg__", "__invert__"):  # fmt: skip
    setattr(FakeCupyArray, _name, _operator(_name))


def _unwrap(value):
    if isinstance(value, FakeCupyArray):
        return value.array
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return FakeCupyArray(value)
    if callable(value) and not isinstance(value, type):

        def call(*args, **kwargs):
            args = [_unwrap(a) for a in args]
            kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
            return _wrap(value(*args, **kwargs))

        return call
    return value


class FakeStream:
    """Numba's handle on an external stream: a plain object, no context-manager methods."""

    def __init__(self, pointer):
        self.pointer = pointer


def fake_cupy_module():
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: _wrap(getattr(np, name))  # xp.empty, xp.asarray, ...
    stream = types.SimpleNamespace(ptr=STREAM_POINTER)
    module.cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
    return module


class Recorder:
    """Stands in for a kernel: ``kernel[grid, block, stream](*args)`` appends to ``calls``."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls
        self.max_block = kernel.max_block  # the launch bound the real kernel was made with
        self.py_func = kernel.py_func

    def __getitem__(self, config):
        assert len(config) == 3, f"launched without a stream: {config}"
        grid, block, stream = config

        def run(*args):
            self.calls.append(
                {"kernel": self.py_func.__name__, "grid": grid, "block": block, "stream": stream,
                 "args": args, "bound": self.max_block}
            )  # fmt: skip

        return run


@pytest.fixture
def real_branch(monkeypatch):
    """The non-simulator branch with fake CuPy, fake streams and recording kernels; yields the
    list of recorded launches."""
    if launch.SIMULATOR:
        pytest.skip("this process runs the simulator: the real branch is not taken")
    calls = []
    made = []

    def external_stream(pointer):
        made.append(pointer)
        return FakeStream(pointer)

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module())
    monkeypatch.setattr(cuda, "external_stream", external_stream)
    launch._external_stream.cache_clear()
    for module, factory in (
        (ce, "cuda_forward_kernel"),
        (ce, "cuda_backward_kernel"),
        (attention, "forward_kernel"),
        (attention, "delta_kernel"),
        (attention, "dkdv_kernel"),
        (attention, "dq_kernel"),
        (adamw, "adamw_kernel"),
    ):
        real = getattr(module, factory)
        monkeypatch.setattr(
            module, factory, lambda *a, _real=real, **k: Recorder(_real(*a, **k), calls)
        )
    launch.reset_launch_counts()
    yield calls
    launch._external_stream.cache_clear()
    assert set(made) <= {STREAM_POINTER}, "the stream must come from CuPy's pointer"
    assert bool(made) == bool(calls), "a stream is made exactly when something is launched"


def device(a):
    return FakeCupyArray(a)


def assert_launch(call, kernel, grid, block):
    assert call["kernel"] == kernel
    assert call["grid"] == grid, (kernel, call["grid"])
    assert call["block"] == block <= call["bound"], (kernel, block, call["bound"])
    assert isinstance(call["stream"], FakeStream) and call["stream"].pointer == STREAM_POINTER
    arrays = [a for a in call["args"] if hasattr(a, "shape") and not np.isscalar(a)]
    assert arrays and all(isinstance(a, FakeCupyArray) for a in arrays), kernel


def test_cross_entropy_forward_and_backward_launch_on_cupys_stream(real_branch):
    logits = device(np.zeros((7, 50), np.float32))
    targets = device(np.array([1, -100, 3, 4, 5, 6, 49]))
    loss, lse = ce.cuda_forward(logits, targets)
    assert isinstance(loss, FakeCupyArray) and loss.shape == (7,)
    grad = ce.cuda_backward(logits, targets, lse, device(np.float32([0.5])), out=logits)
    assert grad is logits
    forward, backward = real_branch
    assert_launch(forward, "cross_entropy_forward", 7, ce.DEFAULT_BLOCK)
    assert_launch(backward, "cross_entropy_backward", 7, ce.DEFAULT_BLOCK)
    assert launch.launches == {"cross_entropy_forward": 1, "cross_entropy_backward": 1}


def test_cross_entropy_at_another_block_size(real_branch):
    logits = device(np.zeros((3, 9), np.float64))
    targets = device(np.array([0, 1, 2]))
    _, lse = ce.cuda_forward(logits, targets, block=128)
    ce.cuda_backward(logits, targets, lse, 1.0, block=128)
    assert [(c["grid"], c["block"], c["bound"]) for c in real_branch] == [(3, 128, 128)] * 2


def test_no_rows_launch_nothing(real_branch):
    logits = device(np.zeros((0, 9), np.float32))
    ce.cuda_forward(logits, device(np.zeros(0, np.int64)))
    assert real_branch == []


@pytest.mark.parametrize("head_dim", [32, 64])
def test_attention_forward_and_backward_launch_on_cupys_stream(real_branch, head_dim):
    batch, heads, seq = 2, 3, 70  # 70: not a multiple of the 64-row tile
    shape = (batch, heads, seq, head_dim)
    q, k, v, grad = (device(np.zeros(shape, np.float32)) for _ in range(4))
    lengths = device(np.array([70, 5]))
    out, lse = attention.attention_forward(q, k, v, lengths, 0.125)
    assert isinstance(out, FakeCupyArray) and out.shape == shape and lse.shape == shape[:3]
    dq, dk, dv = attention.attention_backward(q, k, v, out, lse, grad, lengths, 0.125)
    assert all(isinstance(g, FakeCupyArray) and g.shape == shape for g in (dq, dk, dv))
    block = attention.tiles(head_dim)["block_q"]
    grid = (-(-seq // block), batch * heads)
    names = ["attention_forward_kernel", "attention_delta_kernel", "attention_dkdv_kernel",
             "attention_dq_kernel"]  # fmt: skip
    assert [c["kernel"] for c in real_branch] == names
    for call, name in zip(real_branch, names, strict=True):
        assert_launch(call, name, grid, block)
    lengths_arg = real_branch[0]["args"][3]
    assert lengths_arg.dtype == np.int32  # the kernels index with int32 lengths


def test_attention_layers_share_one_lengths_array_made_from_the_mask(real_branch, monkeypatch):
    """The model's layers all pass the same mask: its lengths are computed once (one device
    sync per batch) and reach every layer's four kernels as the same array, not re-clipped and
    re-cast (two launches) per call."""
    from tinymlm import backend
    from tinymlm.autograd import Tensor

    monkeypatch.setattr(backend, "_cupy", None)  # the fake CuPy, for the autograd engine too
    shape = (2, 2, 40, 32)
    mask = device((np.arange(40)[None, :] < np.array([40, 7])[:, None]).astype(np.int64))
    for _layer in range(2):
        q, k, v = (Tensor(device(np.zeros(shape, np.float32)), requires_grad=True)
                   for _ in range(3))  # fmt: skip
        out = attention.fused_attention_or_none(q, k, v, mask, 0.125)
        assert out is not None
        out.backward(device(np.ones(shape, np.float32)))
    kernels_lengths = [c["args"][3] if c["kernel"] == "attention_forward_kernel" else c["args"][6]
                       for c in real_branch if c["kernel"] != "attention_delta_kernel"]  # fmt: skip
    assert len(kernels_lengths) == 6
    assert all(lengths is kernels_lengths[0] for lengths in kernels_lengths)
    np.testing.assert_array_equal(kernels_lengths[0].array, [40, 7])
    assert kernels_lengths[0].dtype == np.int32


def test_adamw_launches_once_per_parameter_on_cupys_stream(real_branch):
    p, g, m, v = (device(np.zeros((1000, 3), np.float32)) for _ in range(4))
    done = adamw.adamw_step(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                            weight_decay=0.01, step_size=1e-2, correction2=0.03)  # fmt: skip
    assert done
    (call,) = real_branch
    assert_launch(call, "adamw_update", -(-3000 // adamw.BLOCK), adamw.BLOCK)
    scalars = call["args"][4:]
    assert all(type(s) is np.float32 for s in scalars), "float64 scalars in a float32 kernel"


def test_a_launch_past_the_bound_is_refused_before_the_gpu_sees_it(real_branch):
    @launch.cuda_kernel(128)
    def fill(out):
        out[cuda.grid(1)] = 1

    with pytest.raises(ValueError, match="bounded to 128"):
        launch.launch(Recorder(fill, real_branch), 4, 256)
    assert real_branch == []


def test_kernels_carry_their_launch_bound():
    kernel = ce.cuda_forward_kernel("float32", 256)
    assert kernel.max_block == 256
    if not launch.SIMULATOR:
        assert kernel.targetoptions["launch_bounds"] == 256
    with pytest.raises(ValueError, match="1 to 1024"):
        launch.cuda_kernel(2048)


@pytest.mark.parametrize(
    "registers, block, fits",
    [(64, 1024, True), (65, 1024, False), (62, 1024, True), (128, 512, True), (129, 512, False),
     (255, 256, True), (256, 128, False), (72, 1024, False)],
)  # fmt: skip
def test_registers_fit_a_block(registers, block, fits):
    assert launch.registers_fit(registers, block) is fits


def test_compiled_resources_lists_every_specialization(monkeypatch):
    """What the GPU check reports per compiled kernel, read from each specialization (here a
    stand-in for what the driver says after compiling on a GPU)."""

    def fake(name, bound, **overloads):
        kernel = types.SimpleNamespace(py_func=types.SimpleNamespace(__name__=name),
                                       max_block=bound, overloads={})  # fmt: skip
        for signature, (registers, local, shared) in overloads.items():
            kernel.overloads[(signature,)] = types.SimpleNamespace(
                regs_per_thread=registers, local_mem_per_thread=local, shared_mem_per_block=shared
            )
        return kernel

    monkeypatch.setattr(launch, "_built", [
        fake("cross_entropy_backward", 1024, f64=(64, 0, 0), f32=(28, 0, 0)),
        fake("too_greedy", 1024, f32=(72, 16, 0)),
        fake("never_compiled", 64),
    ])  # fmt: skip
    rows = launch.compiled_resources()
    assert [(r["kernel"], r["signature"], r["registers_fit"]) for r in rows] == [
        ("cross_entropy_backward", "f64", True),
        ("cross_entropy_backward", "f32", True),
        ("too_greedy", "f32", False),
    ]
    assert rows[2]["local_bytes_per_thread"] == 16 and rows[0]["launch_bound"] == 1024


def load_lab(name: str):
    """A lab file (``kernels/NAME.py``) as a module, outside the simulator."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lab_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_lab_cross_entropy_variant_launches_through_the_helper(real_branch, monkeypatch):
    lab = load_lab("cross_entropy")
    for name in ("naive_forward", "naive_backward"):
        monkeypatch.setattr(lab, name, Recorder(getattr(lab, name), real_branch))
    two_pass = lab.two_pass_forward
    monkeypatch.setattr(lab, "two_pass_forward", lambda b: Recorder(two_pass(b), real_branch))
    logits = device(np.zeros((5, 77), np.float32))
    targets = device(np.array([1, -100, 3, 4, 76]))
    for name in ("v1", "v2", "v3", "v4", "v5"):
        forward, backward = lab.variant(name, 256)
        _, lse = forward(logits, targets)
        backward(logits, targets, lse, device(np.float32([0.5])))
    assert len(real_branch) == 10
    for call in real_branch:
        grid = 1 if call["kernel"].startswith("naive") else 5  # v1: a thread per row
        assert_launch(call, call["kernel"], grid, 256)


def test_every_lab_attention_variant_launches_through_the_helper(real_branch, monkeypatch):
    lab = load_lab("attention")
    monkeypatch.setattr(lab, "naive_forward_kernel",
                        Recorder(lab.naive_forward_kernel, real_branch))  # fmt: skip
    tiled = lab.tiled_forward_kernel
    monkeypatch.setattr(lab, "tiled_forward_kernel",
                        lambda *a: Recorder(tiled(*a), real_branch))  # fmt: skip
    q = device(np.zeros((2, 1, 21, 32), np.float32))
    lengths = np.array([21, 0])
    for forward in lab.FORWARD.values():
        forward(q, q, q, lengths, 0.2)
    for backward in lab.BACKWARD.values():
        backward(q, q, q, q, lengths, 0.2)
    kernels = [c["kernel"] for c in real_branch]
    assert kernels[:2] == ["naive_forward_kernel", "tiled_forward_kernel"]
    assert kernels.count("attention_forward_kernel") == 3 + 2  # v3-v5, then v3 and v5 again
    assert kernels.count("attention_dq_kernel") == 2
    for call in real_branch:
        assert_launch(call, call["kernel"], call["grid"], call["block"])
