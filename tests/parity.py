"""What the parity tests share (imported by them: pytest puts tests/ on the path)."""

import numpy as np


def assert_gradients_close(ours: dict, theirs: dict, rtol: float) -> None:
    """Every tensor's gradient within rtol of its own largest entry, plus an atol tied to the
    largest gradient of the whole model.

    A plain relative test per element cannot work here: the attention key biases have a
    mathematically zero gradient (adding a constant to every score of a row leaves the softmax
    unchanged), so both sides hold rounding noise (~1e-21 in float64) whose relative difference
    is meaningless. The atol keeps that noise, and nothing larger, from counting.
    """
    assert set(ours) == set(theirs)
    scale = max(float(np.abs(g).max()) for g in theirs.values())
    for name, g in ours.items():
        expected = theirs[name]
        assert g is not None, f"{name} got no gradient"
        assert g.shape == expected.shape and g.dtype == expected.dtype, name
        tol = rtol * float(np.abs(expected).max()) + rtol * scale
        err = float(np.abs(g - expected).max())
        assert err <= tol, f"{name}: max |Δgrad| {err:.3e} > {tol:.3e}"
