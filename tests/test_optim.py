"""AdamW, the learning-rate schedule and gradient clipping (issue 3).

The optimizer is held to PyTorch's: ten AdamW steps of tinymlm's BERT (weight-decay groups,
clipping) give the loss sequence of torch.optim.AdamW on transformers' BERT.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinymlm.autograd import Tensor
from tinymlm.nn.bert import BertConfig, BertForMaskedLM
from tinymlm.nn.module import Parameter
from tinymlm.optim import AdamW, clip_grad_norm_, lr_at, param_groups

# --- the schedule ---------------------------------------------------------------------------------


def test_warmup_is_a_linear_ramp_to_the_base_lr():
    base, warmup, total = 3e-4, 10, 100
    lrs = [lr_at(s, base, warmup, total) for s in range(1, warmup + 1)]
    np.testing.assert_allclose(lrs, base * np.arange(1, warmup + 1) / warmup, rtol=1e-15)
    assert lrs[-1] == base


@pytest.mark.parametrize("decay", ["linear", "cosine"])
@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_decay_runs_from_the_base_lr_to_the_floor(decay, min_ratio):
    base, warmup, total = 1e-3, 5, 45
    assert lr_at(warmup, base, warmup, total, decay, min_ratio) == pytest.approx(base, rel=1e-15)
    assert lr_at(total, base, warmup, total, decay, min_ratio) == pytest.approx(
        base * min_ratio, abs=1e-18
    )
    # past the end it stays at the floor instead of turning back up (cosine) or going negative
    assert lr_at(total + 7, base, warmup, total, decay, min_ratio) == pytest.approx(
        base * min_ratio, abs=1e-18
    )
    # halfway through the decay both shapes are at the midpoint between base and floor
    middle = lr_at(warmup + (total - warmup) // 2, base, warmup, total, decay, min_ratio)
    assert middle == pytest.approx(base * (min_ratio + (1 - min_ratio) / 2), rel=1e-12)
    lrs = [lr_at(s, base, warmup, total, decay, min_ratio) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "the decay must never increase the lr"


def test_decay_shapes_match_their_formulas():
    base, warmup, total = 2.0, 4, 24
    for s in range(warmup, total + 1):
        progress = (s - warmup) / (total - warmup)
        assert lr_at(s, base, warmup, total, "linear") == pytest.approx(base * (1 - progress))
        cosine = base * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at(s, base, warmup, total, "cosine") == pytest.approx(cosine)
        assert lr_at(s, base, warmup, total, "constant") == base


def test_schedule_without_warmup_and_unknown_decay():
    assert lr_at(1, 1e-3, 0, 10) == pytest.approx(1e-3 * 0.9)
    with pytest.raises(ValueError, match="unknown decay"):
        lr_at(5, 1e-3, 0, 10, "exponential")


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_schedule_matches_transformers(decay):
    """lr_at(s) is the lr of update s; transformers' schedulers hold lr(s) after s scheduler
    steps. (Their first update runs at lr(0) = 0; ours starts the ramp at update 1.)"""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base, warmup, total = 1e-3, 3, 12
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    make = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }[decay]
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(1, total + 1):
        opt.step()  # no gradient: nothing moves, but torch wants this order
        sched.step()
        expected = opt.param_groups[0]["lr"]
        assert lr_at(step, base, warmup, total, decay) == pytest.approx(expected, abs=1e-15)


# --- clipping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "leaves-alone"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(max_norm, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(dtype) for s in [(4, 3), (3,), (2, 2, 2)]]
    ours = [Parameter(np.zeros(g.shape, dtype)) for g in grads]
    for p, g in zip(ours, grads):
        p.grad = g.copy()
    ours.append(Parameter(np.zeros(2, dtype)))  # no gradient: skipped, as torch does
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(theirs, grads):
        p.grad = torch.tensor(g.astype(np.float64))

    norm = clip_grad_norm_(ours, max_norm)
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(float(norm), expected_norm.item(), rtol=rtol)
    for p, t in zip(ours, theirs):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=rtol)
    if max_norm < 1:
        clipped = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in ours[:3]))
        assert clipped == pytest.approx(max_norm, rel=1e-5)
    else:
        for p, g in zip(ours, grads):
            np.testing.assert_array_equal(p.grad, g)


def test_clip_grad_norm_with_no_gradients_is_zero():
    assert float(clip_grad_norm_([Parameter(np.ones(3))], 1.0)) == 0.0


# --- AdamW ----------------------------------------------------------------------------------------


def test_adamw_single_parameter_matches_torch_update_by_update():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((5, 4))
    ours = Parameter(start.copy())
    theirs = torch.tensor(start, requires_grad=True)
    opt = AdamW([ours], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    topt = torch.optim.AdamW([theirs], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    for _ in range(6):
        g = rng.standard_normal(start.shape)
        ours.grad = g.copy()
        theirs.grad = torch.tensor(g)
        opt.step()
        topt.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_param_groups_decay_only_matrices_and_embeddings():
    cfg = BertConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=12,
        max_position_embeddings=8,
    )
    model = BertForMaskedLM(cfg)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for p in decay["params"]]
    kept = [names[id(p)] for p in no_decay["params"]]
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(n.endswith("bias") or "LayerNorm" in n for n in kept)
    assert "bert.embeddings.word_embeddings.weight" in decayed
    assert sorted(decayed + kept) == sorted(names.values()), "each parameter in one group"


HF_CONFIG = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, (3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    mask[0, 5:] = 0
    labels = np.full((3, 7), -100)
    labels[0, 1], labels[1, 6], labels[2, 0], labels[2, 3] = 4, 9, 33, 12
    return ids, mask, labels


def test_ten_adamw_steps_match_torch_on_transformers_bert(tmp_path):
    """llm.c's check: the same losses, step after step, as the reference framework."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**HF_CONFIG)).double().train()
    hf.save_pretrained(tmp_path)
    model = BertForMaskedLM.from_pretrained(tmp_path).train()
    ids, mask, labels = _batch()

    kwargs = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-8)
    opt = AdamW(param_groups(model, 0.01), **kwargs)
    hf_decay = [p for n, p in hf.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    hf_rest = [p for n, p in hf.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    topt = torch.optim.AdamW(
        [{"params": hf_decay, "weight_decay": 0.01}, {"params": hf_rest, "weight_decay": 0.0}],
        **kwargs,
    )
    ours, theirs = [], []
    for _ in range(10):
        opt.zero_grad()
        loss = model(ids, mask, None, labels).loss
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ours.append(loss.item())

        topt.zero_grad()
        out = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            labels=torch.tensor(labels),
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        topt.step()
        theirs.append(out.loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    assert ours[-1] < 0.5 * ours[0], "ten steps on one batch must learn it"
    # and the weights themselves, not only the losses
    hf_state = hf.state_dict()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            p.data, hf_state[name].numpy(), rtol=1e-7, atol=1e-10, err_msg=name
        )


def _train(model, opt, steps, ids, mask, labels):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, mask, None, labels).loss
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def test_adamw_state_dict_round_trip_continues_identically():
    cfg = BertConfig(**{**HF_CONFIG, "vocab_size": 50})
    ids, mask, labels = _batch()

    def fresh():
        import tinymlm

        tinymlm.manual_seed(5)
        return BertForMaskedLM(cfg).to(np.float64).train()

    straight = fresh()
    opt = AdamW(param_groups(straight, 0.01), lr=3e-3)
    expected = _train(straight, opt, 6, ids, mask, labels)

    first = fresh()
    opt1 = AdamW(param_groups(first, 0.01), lr=3e-3)
    _train(first, opt1, 3, ids, mask, labels)
    state = opt1.state_dict()
    weights = first.state_dict()
    assert state["step"] == 3
    assert all(isinstance(a, np.ndarray) for a in state["arrays"].values())

    resumed = fresh()
    resumed.load_state_dict(weights)
    opt2 = AdamW(param_groups(resumed, 0.01), lr=999.0)  # hyper-parameters come from the state
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 3e-3
    rest = _train(resumed, opt2, 3, ids, mask, labels)
    assert rest == expected[3:], "a resumed optimizer must continue bit for bit"
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_adamw_skips_parameters_without_gradient_and_keeps_float32():
    p = Parameter(np.ones(3, dtype=np.float32))
    q = Parameter(np.ones(3, dtype=np.float32))
    opt = AdamW([p, q], lr=0.1, weight_decay=0.0)
    p.grad = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    opt.step()
    np.testing.assert_array_equal(q.data, np.ones(3, dtype=np.float32))
    assert p.data.dtype == np.float32
    # first step of Adam moves every coordinate with a nonzero gradient by lr (m/√v = ±1)
    np.testing.assert_allclose(p.data, [0.9, 1.1, 1.0], rtol=1e-6)
    assert Tensor(p.data).dtype == np.float32
