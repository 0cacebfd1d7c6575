"""InstrumentedAdamW: bit-identical to torch.optim.AdamW, swappable state, correct diagnostics (Eq. 4-6)."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import companion as cp
from companion import optim
from companion.optim import CHEAP_KEYS, FULL_KEYS, InstrumentedAdamW

TEST_CHUNK = 1 << 12  # the chunked step reads optim.CHUNK when it runs: small chunks keep the tests fast
SHAPES = [(TEST_CHUNK + 123,), (33, 7), (5,)]  # one parameter spans two chunks


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(optim, "CHUNK", TEST_CHUNK)
    monkeypatch.setattr(optim, "CHUNKED_STEP_SIZE", 1000)  # the first parameter chunked, the others batched


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, dtype=dtype, generator=gen)) for s in SHAPES]


def set_grads(params: list[torch.Tensor], gen: torch.Generator) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=gen)
        p.grad.view(-1)[::3] = 0  # exact zeros: momentum-only coordinates


def run(opt_cls, params, steps: int, seed: int = 1, **kwargs):
    opt = opt_cls(params, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        set_grads(params, gen)
        opt.step()
    return opt


CONFIGS = list(itertools.product([torch.float32, torch.float64], [0.0, 0.1], [False, True], [False, True]))


@pytest.mark.parametrize("level", ["off", "cheap", "full"])
@pytest.mark.parametrize(("dtype", "weight_decay", "amsgrad", "foreach"), CONFIGS)
def test_parameters_bit_identical_to_torch(dtype, weight_decay, amsgrad, foreach, level):
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach)
    ref = make_params(dtype)
    run(torch.optim.AdamW, ref, 100, **kwargs)
    got = make_params(dtype)
    run(InstrumentedAdamW, got, 100, diagnostics=level, **kwargs)
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("level", ["cheap", "full"])
def test_maximize_and_nonfloat_paths_bit_identical(level):
    # maximize goes through the chunked step; a tensor lr or fused=True take torch's own step + the state.
    cases = (dict(maximize=True, lr=1e-2), dict(lr=torch.tensor(1e-2), foreach=False), dict(fused=True))
    for kwargs in cases:
        ref = make_params(torch.float32)
        run(torch.optim.AdamW, ref, 100, **kwargs)
        got = make_params(torch.float32)
        run(InstrumentedAdamW, got, 100, diagnostics=level, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_param_groups_scheduler_and_closure_bit_identical():
    def build(cls, params, **kw):
        opt = cls([{"params": params[:1]}, {"params": params[1:], "lr": 3e-3, "weight_decay": 0.0}],
                  lr=1e-2, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        return opt, sched

    results = []
    for cls, kw in ((torch.optim.AdamW, {}), (InstrumentedAdamW, {"diagnostics": "full"})):
        params = make_params(torch.float64)
        opt, sched = build(cls, params, **kw)
        gen = torch.Generator().manual_seed(3)
        for _ in range(100):
            target = torch.randn(SHAPES[1], dtype=torch.float64, generator=gen)

            def closure(params=params, target=target, opt=opt):
                opt.zero_grad()
                loss = ((params[1] - target) ** 2).sum() + params[0].square().mean() + params[2].sum()
                loss.backward()
                return loss

            opt.step(closure)
            sched.step()
        results.append((params, opt))
    (ref, _), (got, opt) = results
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert opt.history["lr/group1"][-1] == pytest.approx(3e-3 / 100)
    assert len(opt.history) == 100


def test_state_dict_swaps_both_ways_bit_identical():
    kwargs = dict(lr=1e-2, weight_decay=0.05, amsgrad=True)
    ref = make_params(torch.float32)
    run(torch.optim.AdamW, ref, 60, **kwargs)

    # ours for 30 steps, then torch for 30 steps
    params = make_params(torch.float32)
    ours = run(InstrumentedAdamW, params, 30, diagnostics="full", **kwargs)
    theirs = torch.optim.AdamW(params, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        set_grads(params, gen)  # replay the same gradient stream
    for _ in range(30):
        set_grads(params, gen)
        theirs.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, params, strict=True))

    # torch for 30 steps, then ours for 30 steps
    params = make_params(torch.float32)
    theirs = run(torch.optim.AdamW, params, 30, **kwargs)
    ours = InstrumentedAdamW(params, diagnostics="cheap", **kwargs)
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        set_grads(params, gen)
    for _ in range(30):
        set_grads(params, gen)
        ours.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, params, strict=True))
    assert math.isnan(ours.history["c_t"][0])  # no C_T across a swap
    assert ours.state_dict()["param_groups"][0].keys() == theirs.state_dict()["param_groups"][0].keys()


def reference_diagnostics(params, opt, before, eps, beta1, beta2, amsgrad, maximize=False):
    """Independent fp64 recomputation from torch.optim.AdamW's state and the parameters before/after: over
    the parameters that had a gradient, each with its own step t."""
    kept = [i for i, p in enumerate(params) if p.grad is not None]
    params, before = [params[i] for i in kept], [before[i] for i in kept]

    def bias_corrected(key, beta):
        return torch.cat([opt.state[p][key].double().reshape(-1) / (1 - beta ** float(opt.state[p]["step"]))
                          for p in params])

    g = torch.cat([p.grad.double().reshape(-1) for p in params])
    g_eff = -g if maximize else g
    m = bias_corrected("exp_avg", beta1)
    v = bias_corrected("max_exp_avg_sq" if amsgrad else "exp_avg_sq", beta2)
    delta = torch.cat([(p.double() - b.double()).reshape(-1) for p, b in zip(params, before, strict=True)])
    u = m / (v.sqrt() + eps)
    return {
        "grad_norm": g.norm().item(),
        "m_hat_norm": m.norm().item(),
        "precond_norm": u.norm().item(),
        "sqrt_v_hat_min": v.sqrt().min().item(),
        "sqrt_v_hat_mean": v.sqrt().mean().item(),
        "sqrt_v_hat_max": v.sqrt().max().item(),
        "eps_dominated_frac": (v.sqrt() <= eps).double().mean().item(),
        "update_norm": delta.norm().item(),
        "cos_update_neg_grad": (torch.dot(delta, -g_eff) / (delta.norm() * g.norm())).item(),
        "momentum_only_frac": ((g == 0) & (m != 0)).double().mean().item(),
    }


@pytest.mark.parametrize(("amsgrad", "maximize", "tensor_lr", "dense"),
                         [(False, False, False, False), (True, True, False, False),
                          (False, False, True, False), (False, False, False, True),
                          (False, False, True, True)])
def test_full_diagnostics_match_an_independent_fp64_reference(amsgrad, maximize, tensor_lr, dense):
    """Sparse gradients with a large ε take every counting pass; dense ones with a small ε take the
    shortcuts (every √v̂ above ε, no gradient exactly 0)."""
    beta1, beta2 = 0.9, 0.95
    eps = 1e-12 if dense else 1e-3
    lr = torch.tensor(1e-2) if tensor_lr else 1e-2  # a tensor lr takes the read-the-state path
    kw = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize,
              foreach=False)
    ref_params, got_params = make_params(torch.float64), make_params(torch.float64)
    ref = torch.optim.AdamW(ref_params, **kw)
    got = InstrumentedAdamW(got_params, diagnostics="full", **kw)
    gen = torch.Generator().manual_seed(5)
    for step in range(25):
        for rp, gp in zip(ref_params, got_params, strict=True):
            grad = torch.randn(rp.shape, dtype=torch.float64, generator=gen) * 1e-3
            if not dense:
                grad.view(-1)[::3] = 0
            if step >= 20 and not dense:
                grad.view(-1)[: grad.numel() // 2] = 0  # the gradient vanishes on half of the coordinates
            rp.grad, gp.grad = grad.clone(), grad.clone()
        before = [p.detach().clone() for p in ref_params]
        ref.step()
        got.step()
        expected = reference_diagnostics(ref_params, ref, before, eps, beta1, beta2, amsgrad, maximize)
        for key, value in expected.items():
            assert got.history[key][-1] == pytest.approx(value, rel=1e-9, abs=1e-15), key
    if dense:
        assert (got.history["momentum_only_frac"] == 0).all()
        assert (got.history["eps_dominated_frac"] == 0).all()
    else:
        assert got.history["momentum_only_frac"][-1] > 0.3
        assert 0 < got.history["eps_dominated_frac"][-1] < 1


def test_cheap_level_leaves_full_keys_nan_and_keeps_no_buffer():
    params = make_params(torch.float32)
    opt = run(InstrumentedAdamW, params, 5, diagnostics="cheap")
    h = opt.history
    for key in CHEAP_KEYS:
        assert key in h and key + "/group0" in h
    for key in CHEAP_KEYS:
        if key != "c_t":
            assert np.isfinite(h[key]).all(), key
    for key in FULL_KEYS:
        assert np.isnan(h[key]).all(), key
    assert opt._snapshots == {}
    # every column is a per-step list of Python floats: memory grows with steps, not with the model
    assert all(len(col) == 5 and all(isinstance(x, float) for x in col) for col in h._columns.values())


def test_full_level_keeps_at_most_one_parameter_sized_buffer():
    params = make_params(torch.float32)
    chunked = run(InstrumentedAdamW, params, 3, diagnostics="full")
    assert chunked._snapshots == {}  # the chunked step needs no buffer at all
    params = make_params(torch.float32)
    by_state = run(InstrumentedAdamW, params, 3, diagnostics="full", lr=torch.tensor(1e-3), foreach=False)
    assert sum(b.numel() for b in by_state._snapshots.values()) == sum(p.numel() for p in params)
    by_state.diagnostics = "cheap"
    assert by_state._snapshots == {}


def test_off_records_nothing_and_levels_are_validated():
    opt = run(InstrumentedAdamW, make_params(torch.float32), 3, diagnostics="off")
    assert len(opt.history) == 0
    with pytest.raises(ValueError, match="diagnostics"):
        InstrumentedAdamW(make_params(torch.float32), diagnostics="everything")
    with pytest.raises(ValueError, match="diagnostics"):
        opt.diagnostics = "verbose"


def test_totals_combine_groups_and_c_t_is_the_ratio_of_preconditioned_norms():
    params = make_params(torch.float64)
    opt = InstrumentedAdamW([{"params": params[:1]}, {"params": params[1:], "lr": 1e-3}], diagnostics="full")
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        set_grads(params, gen)
        opt.step()
    h = opt.history
    for key in ("grad_norm", "m_hat_norm", "precond_norm", "update_norm"):
        np.testing.assert_allclose(h[key], np.hypot(h[key + "/group0"], h[key + "/group1"]), rtol=1e-12)
    np.testing.assert_allclose(h["sqrt_v_hat_max"], np.maximum(h["sqrt_v_hat_max/group0"],
                                                               h["sqrt_v_hat_max/group1"]), rtol=0)
    assert math.isnan(h["c_t"][0])
    np.testing.assert_allclose(h["c_t"][1:], h["precond_norm"][1:] / h["precond_norm"][:-1], rtol=1e-12)
    np.testing.assert_array_equal(h["step"], np.arange(1, 7))


def test_nonfinite_gradients_are_flagged_not_hidden():
    ref, got = make_params(torch.float32), make_params(torch.float32)
    opts = [torch.optim.AdamW(ref), InstrumentedAdamW(got, diagnostics="full")]
    for params, opt in zip((ref, got), opts, strict=True):
        for p in params:
            p.grad = torch.ones_like(p)
        params[1].grad[0, 0] = math.nan
        opt.step()
    h = opts[1].history
    assert h["nonfinite_grad"][0] == 1.0 and math.isnan(h["grad_norm"][0])
    assert h["nonfinite_grad/group0"][0] == 1.0
    assert all(torch.equal(a, b, ) or (a.isnan() == b.isnan()).all() for a, b in zip(ref, got, strict=True))
    assert torch.isnan(got[1][0, 0]) and not torch.isnan(got[0]).any()


def test_reset_moments_restarts_adam_like_a_fresh_optimizer():
    params = make_params(torch.float64)
    opt = run(InstrumentedAdamW, params, 20, diagnostics="cheap", lr=1e-2)
    opt.reset_moments()
    assert all(float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()
               for s in opt.state.values())
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = torch.optim.AdamW(fresh_params, lr=1e-2)
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(10):
        set_grads(params, gen_a)
        set_grads(fresh_params, gen_b)
        opt.step()
        fresh.step()
    assert all(torch.equal(a, b) for a, b in zip(params, fresh_params, strict=True))
    assert math.isnan(opt.history["c_t"][20])  # C_T restarts after a reset
    assert opt.history["t/group0"][20] == 1.0


def test_new_batch_counts_batches_and_resets_only_when_asked():
    for reset in (False, True):
        params = make_params(torch.float64)
        opt = InstrumentedAdamW(params, reset_on_new_batch=reset)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            opt.new_batch()
            for _ in range(4):  # mu = 4 inner steps on the batch
                set_grads(params, gen)
                opt.step()
        h = opt.history
        np.testing.assert_array_equal(h["batch"], np.repeat([1.0, 2.0, 3.0], 4))
        expected_t = np.tile([1.0, 2.0, 3.0, 4.0], 3) if reset else np.arange(1.0, 13.0)
        np.testing.assert_array_equal(h["t/group0"], expected_t)


def test_bad_input_messages_match_torch():
    p = [torch.nn.Parameter(torch.zeros(3))]
    cases = [dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)),
             dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1)]
    for kwargs in cases:
        with pytest.raises(ValueError) as theirs:
            torch.optim.AdamW(p, **kwargs)
        with pytest.raises(ValueError) as ours:
            InstrumentedAdamW(p, **kwargs)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="non-leaf"):
        InstrumentedAdamW([torch.zeros(3, requires_grad=True) * 2])
    messages = []
    for cls in (torch.optim.AdamW, InstrumentedAdamW):
        emb = torch.nn.Embedding(10, 3, sparse=True)
        emb(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match="sparse gradients") as err:
            cls(emb.parameters()).step()
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def paper_eq5_6_moments(grads: list[float], beta1: float, beta2: float) -> tuple[list[float], list[float]]:
    """The paper's Eqs. 5-6 as printed, read as a recursion in m_t and v_t themselves (m_0 = v_0 = 0):
    m_t = β1 m_{t−1}/(1−β1^{t−1}) + (1−β1) g_t/(1−β1^t), and the same for v with β2 and g²."""
    m, v, ms, vs = 0.0, 0.0, [], []
    for t, g in enumerate(grads, start=1):
        m = (beta1 * m / (1 - beta1 ** (t - 1)) if t > 1 else 0.0) + (1 - beta1) * g / (1 - beta1**t)
        v = (beta2 * v / (1 - beta2 ** (t - 1)) if t > 1 else 0.0) + (1 - beta2) * g * g / (1 - beta2**t)
        ms.append(m)
        vs.append(v)
    return ms, vs


def paper_eq5_read_with_standard_moments(grads: list[float], beta1: float) -> list[float]:
    """The other reading of Eq. 5: m_{t−1}/(1−β1^{t−1}) as the standard corrected moment m̂_{t−1}."""
    m, out = 0.0, []
    for t, g in enumerate(grads, start=1):
        m_hat_before = m / (1 - beta1 ** (t - 1)) if t > 1 else 0.0
        out.append(beta1 * m_hat_before + (1 - beta1) * g / (1 - beta1**t))
        m = beta1 * m + (1 - beta1) * g
    return out


def standard_adam_moments(grads: list[float], beta1: float, beta2: float) -> tuple[float, float]:
    """Adam (Kingma & Ba, Alg. 1), as in the paper's App. C.3 and in torch: correct after the recursion."""
    m = v = 0.0
    for g in grads:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
    t = len(grads)
    return m / (1 - beta1**t), v / (1 - beta2**t)


def test_errata_eq5_6_bias_correction_differs_and_library_uses_the_standard_one():
    beta1, beta2, lr = 0.9, 0.95, 1e-2
    # the numbers book/errata.md quotes: constant gradient 1, standard m̂ = v̂ = 1 at every step
    for t in range(1, 5):
        assert standard_adam_moments([1.0] * t, beta1, beta2) == pytest.approx((1.0, 1.0), rel=1e-15)
    ms, vs = paper_eq5_6_moments([1.0] * 4, beta1, beta2)
    assert [round(m, 2) for m in ms] == [1.0, 9.53, 45.49, 151.38]
    assert [round(v) for v in vs] == [1, 20, 190, 1269]
    assert [round(m / math.sqrt(v), 2) for m, v in zip(ms, vs, strict=True)] == [1.0, 2.16, 3.3, 4.25]
    assert round(paper_eq5_read_with_standard_moments([1.0] * 2, beta1)[1], 2) == 1.43
    # the parameter moved by the library and by torch is −lr·m̂/√v̂ (ε = 0) with the *standard* moments
    grads = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    standard = standard_adam_moments(grads, beta1, beta2)
    ms, vs = paper_eq5_6_moments(grads, beta1, beta2)
    for cls in (InstrumentedAdamW, torch.optim.AdamW):
        p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        opt = cls([p], lr=lr, betas=(beta1, beta2), eps=0.0, weight_decay=0.0)
        for g in grads:
            before = p.item()
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        last_step = p.item() - before
        assert last_step == pytest.approx(-lr * standard[0] / math.sqrt(standard[1]), rel=1e-12)
        assert last_step != pytest.approx(-lr * ms[-1] / math.sqrt(vs[-1]), rel=1e-3)


def test_public_name():
    assert cp.InstrumentedAdamW is InstrumentedAdamW


@pytest.mark.parametrize("level", ["off", "cheap", "full"])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_step_hooks_run_once_even_when_torch_adamw_step_is_patched(level, tensor_lr):
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # patches AdamW.step with torch's hook wrapper
    params = make_params(torch.float32)
    lr = torch.tensor(1e-3) if tensor_lr else 1e-3
    opt = InstrumentedAdamW(params, lr=lr, foreach=False, diagnostics=level)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert calls == ["pre", "post"]


def test_non_contiguous_and_bfloat16_parameters_take_torch_step_and_still_report():
    def build():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(7, 5, generator=gen).t()),
                torch.nn.Parameter(torch.randn(9, generator=gen).to(torch.bfloat16))]

    ref, got = build(), build()
    opts = [torch.optim.AdamW(ref, foreach=False), InstrumentedAdamW(got, foreach=False, diagnostics="full")]
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in ref]
        for params, opt in zip((ref, got), opts, strict=True):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    h = opts[1].history
    for key in ("grad_norm", "precond_norm", "update_norm", "cos_update_neg_grad", "sqrt_v_hat_mean"):
        assert np.isfinite(h[key]).all(), key


def test_pickle_and_deepcopy_keep_settings_and_history():
    import copy
    import pickle

    params = make_params(torch.float64)
    opt = run(InstrumentedAdamW, params, 3, diagnostics="full", reset_on_new_batch=True)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.diagnostics == "full" and clone.reset_on_new_batch and len(clone.history) == 3
        for p in clone.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        clone.step()
        assert len(clone.history) == 4 and clone.history["step"][-1] == 4.0
        assert not math.isnan(clone.history["c_t"][-1])
    assert len(opt.history) == 3


def test_a_group_added_mid_run_gets_nan_padded_columns():
    params = make_params(torch.float32)
    opt = run(InstrumentedAdamW, params[:1], 2)
    opt.add_param_group({"params": params[1:]})
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    column = opt.history["grad_norm/group1"]
    assert len(column) == 3 and np.isnan(column[:2]).all() and column[2] > 0
    assert opt.history["grad_norm"][2] == pytest.approx(math.sqrt(sum(p.numel() for p in params)), rel=1e-6)


# --- issue 13: torch's own step for capturable and differentiable groups; History.clear (perf) ---------
@pytest.mark.parametrize("level", ["cheap", "full"])
def test_differentiable_groups_take_torch_step_keep_the_graph_and_report(level):
    """differentiable=True: the step itself is part of the autograd graph (parameters are non-leaf), which
    only torch's step keeps; the diagnostics are read from the state afterwards."""
    def build():
        leaf = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                           requires_grad=True)
        p = leaf.clone()
        p.retain_grad()
        return leaf, p

    (leaf_ref, p_ref), (leaf_got, p_got) = build(), build()
    ref = torch.optim.AdamW([p_ref], lr=1e-2, weight_decay=0.1, differentiable=True)
    got = InstrumentedAdamW([p_got], lr=1e-2, weight_decay=0.1, differentiable=True, diagnostics=level)
    gen = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(4):
        g = torch.randn(6, dtype=torch.float64, generator=gen)
        grads.append(g)
        p_ref.grad, p_got.grad = g.clone(), g.clone()
        ref.step()
        got.step()
    assert torch.equal(p_ref.detach(), p_got.detach()) and p_got.grad_fn is not None
    (d_ref,) = torch.autograd.grad(p_ref.sum(), leaf_ref)
    (d_got,) = torch.autograd.grad(p_got.sum(), leaf_got)
    assert torch.equal(d_ref, d_got)
    h = got.history
    np.testing.assert_allclose(h["grad_norm"], [g.norm().item() for g in grads], rtol=1e-12)
    v = got.state[p_got]["exp_avg_sq"].detach()
    root = (v.sqrt() / math.sqrt(1 - 0.999**4)).max().item()
    assert h["sqrt_v_hat_max"][-1] == pytest.approx(root, rel=1e-12)
    assert np.isfinite(h["update_norm"]).all() == (level == "full")


def test_capturable_groups_take_torch_step():
    """capturable=True: torch's step (CUDA graphs keep the step count on the device). On the CPU torch
    refuses it, and so must InstrumentedAdamW: the chunked step would silently ignore the flag."""
    if torch.cuda.is_available():
        ref = [torch.nn.Parameter(p.detach().cuda()) for p in make_params(torch.float32)]
        got = [torch.nn.Parameter(p.detach().cuda()) for p in make_params(torch.float32)]
        run(torch.optim.AdamW, ref, 10, capturable=True)
        opt = run(InstrumentedAdamW, got, 10, capturable=True, diagnostics="full")
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        assert np.isfinite(opt.history["grad_norm"]).all()
        return
    params = make_params(torch.float32)
    opt = InstrumentedAdamW(params, capturable=True, diagnostics="cheap")
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(AssertionError, match="capturable"):
        opt.step()
    assert len(opt.history) == 0


def test_only_plain_groups_take_the_chunked_step(monkeypatch):
    calls = []
    monkeypatch.setattr(optim, "_torch_adamw_step",
                        lambda opt, closure: calls.append(opt) or torch.optim.AdamW.step(opt, closure))
    plain = make_params(torch.float32)
    run(InstrumentedAdamW, plain, 2)
    assert calls == []
    for flags in (dict(capturable=True), dict(differentiable=True), dict(fused=True)):
        group = {"params": plain, "lr": 1e-3, "betas": (0.9, 0.999), "capturable": False,
                 "differentiable": False, "fused": None, **flags}
        assert not optim._fusable(group), flags
    assert optim._fusable({"params": plain, "lr": 1e-3, "betas": (0.9, 0.999), "capturable": False,
                           "differentiable": False, "fused": None})
    assert not optim._fusable({"params": plain, "lr": torch.tensor(1e-3), "betas": (0.9, 0.999),
                               "capturable": False, "differentiable": False, "fused": None})
    assert not optim._fusable({"params": plain, "lr": 1e-3, "betas": (torch.tensor(0.9), 0.999),
                               "capturable": False, "differentiable": False, "fused": None})


def test_history_clear_forgets_rows_and_columns():
    opt = run(InstrumentedAdamW, make_params(torch.float32), 3)
    assert len(opt.history) == 3 and "grad_norm" in opt.history
    opt.history.clear()
    assert len(opt.history) == 0 and opt.history.keys() == [] and "grad_norm" not in opt.history
    assert opt.history.as_dict() == {} and repr(opt.history) == "History(0 steps, 0 columns)"
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert len(opt.history) == 1 and len(opt.history["grad_norm"]) == 1  # no NaN rows left from before
    assert opt.history["step"][0] == 4.0  # the optimizer's own step count is not part of the record
    h = optim.History()
    h.append({"a": 1.0})
    h.append({"b": 2.0})
    assert np.isnan(h["a"][1]) and np.isnan(h["b"][0]) and h["b"][1] == 2.0
    with pytest.raises(KeyError, match="available"):
        h["c"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sqrt_without_the_slow_path_is_torch_sqrt_bit_for_bit(dtype):
    tiny = torch.finfo(dtype).tiny
    v = torch.tensor([0.0, 0.0, 1.0, 2.0, tiny, tiny / 8, 1e-30, 3e30, float("inf"), float("nan")],
                     dtype=dtype)
    for values in (v, v[2:], torch.zeros(5, dtype=dtype)):
        out, work = torch.empty_like(values), torch.empty_like(values)
        got = optim._sqrt(values, out, work)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got, torch.sqrt(values), rtol=0, atol=0, equal_nan=True)
        assert (got.signbit() == torch.sqrt(values).signbit()).all()


def test_off_level_takes_the_chunked_step_when_groups_are_plain(monkeypatch):
    calls = []
    monkeypatch.setattr(optim, "_torch_adamw_step", lambda opt, closure: calls.append(1))
    params = make_params(torch.float32)
    opt = run(InstrumentedAdamW, params, 3, diagnostics="off")
    assert calls == [] and len(opt.history) == 0 and all(float(s["step"]) == 3 for s in opt.state.values())
    run(InstrumentedAdamW, make_params(torch.float32), 1, diagnostics="off", lr=torch.tensor(0.1))
    assert calls == [1]


@pytest.mark.parametrize(("dtype", "weight_decay", "amsgrad", "foreach"), CONFIGS)
def test_off_level_splits_parameters_by_size_and_stays_bit_identical(monkeypatch, dtype, weight_decay,
                                                                      amsgrad, foreach):
    """Without diagnostics, large parameters take the chunked loop (here: the one of TEST_CHUNK + 123
    elements, in two chunks, with exact zeros of v through the zero-safe sqrt) and small ones torch's."""
    monkeypatch.setattr(optim, "CHUNKED_STEP_SIZE", 1000)
    monkeypatch.setattr(optim, "SAFE_SQRT_SIZE", 1000)
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach)
    chunked = []
    original = optim._adamw_chunk
    monkeypatch.setattr(optim, "_adamw_chunk", lambda *a: chunked.append(a[0].numel()) or original(*a))
    ref, got = make_params(dtype), make_params(dtype)
    run(torch.optim.AdamW, ref, 50, **kwargs)
    opt = run(InstrumentedAdamW, got, 50, diagnostics="off", **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert set(chunked) == {TEST_CHUNK, 123} and len(opt.history) == 0
    state = opt.state[got[0]]
    assert (state["exp_avg_sq"].view(-1)[::3] == 0).all()  # the zeros the sqrt went around


def test_step_returns_none_or_the_closure_s_loss_at_every_level():
    for level in ("off", "cheap", "full"):
        params = make_params(torch.float32)
        opt = InstrumentedAdamW(params, diagnostics=level)
        set_grads(params, torch.Generator().manual_seed(0))
        assert opt.step() is None
        assert opt.step(lambda: 3.5) == 3.5


def test_a_step_without_any_gradient_records_no_totals():
    params = make_params(torch.float32)
    opt = InstrumentedAdamW(params, diagnostics="full")
    opt.step()  # nothing had a gradient
    assert len(opt.history) == 1 and "grad_norm" not in opt.history and opt.history["step"][0] == 1.0


def test_a_zero_update_has_an_undefined_cosine_not_an_error():
    params = make_params(torch.float64)
    opt = InstrumentedAdamW(params, diagnostics="full", weight_decay=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.history["update_norm"][0] == 0.0 and math.isnan(opt.history["cos_update_neg_grad"][0])


def test_maximize_on_torch_s_step_flips_the_cosine():
    """With maximize torch ascends along +grad: cos(Δθ, −g_eff) stays positive on the read-the-state path."""
    for tensor_lr in (False, True):
        params = make_params(torch.float64)
        lr = torch.tensor(1e-2) if tensor_lr else 1e-2
        opt = run(InstrumentedAdamW, params, 3, lr=lr, maximize=True, diagnostics="full", foreach=False)
        assert opt.history["cos_update_neg_grad"][-1] > 0.5, tensor_lr


def test_complex_parameters_take_torch_step_and_report_real_statistics():
    gen = torch.Generator().manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(6, dtype=torch.complex64, generator=gen))]
    got = [torch.nn.Parameter(ref[0].detach().clone())]
    opts = [torch.optim.AdamW(ref, foreach=False), InstrumentedAdamW(got, foreach=False, diagnostics="full")]
    for _ in range(5):
        grad = torch.randn(6, dtype=torch.complex64, generator=gen)
        for params, opt in zip((ref, got), opts, strict=True):
            params[0].grad = grad.clone()
            opt.step()
    assert torch.equal(ref[0], got[0])
    h = opts[1].history
    assert h["grad_norm"][-1] == pytest.approx(torch.view_as_real(grad).norm().item(), rel=1e-6)
    assert np.isfinite(h["cos_update_neg_grad"]).all()


def test_torch_s_step_gets_the_closure_at_level_off():
    params = make_params(torch.float32)
    opt = InstrumentedAdamW(params, diagnostics="off", lr=torch.tensor(1e-2))  # not plain: torch's step
    set_grads(params, torch.Generator().manual_seed(0))
    calls = []
    assert opt.step(lambda: calls.append(1) or 2.5) == 2.5 and calls == [1]


def test_maximize_cosine_is_the_same_on_both_paths():
    """The chunked step (float lr) and torch's step read through the state (tensor lr) take the same steps;
    their cos(Δθ, −g_eff) must agree, maximize or not."""
    for maximize in (False, True):
        histories = []
        for lr in (1e-2, torch.tensor(1e-2)):
            opt = run(InstrumentedAdamW, make_params(torch.float64), 4, lr=lr, maximize=maximize,
                      diagnostics="full", foreach=False)
            histories.append(opt.history["cos_update_neg_grad"])
        np.testing.assert_allclose(histories[0], histories[1], rtol=1e-6)
        assert (np.abs(histories[0]) <= 1 + 1e-12).all()


def test_the_lab_and_instrumented_adamw_never_import_torch_s_compiler():
    """torch's Optimizer.add_param_group and zero_grad import torch._dynamo on first use (about 1 s);
    InstrumentedAdamW calls them unwrapped, so a chapter's training never pays for it (fresh process)."""
    script = """
import sys, torch, companion as cp
from companion.optim import InstrumentedAdamW
torch.set_num_threads(1)
for task in (cp.make_task("add", base=3, length="short"), cp.make_task("pick")):
    for policy in (cp.TabularPolicy.for_task(task, num_seeds=2), cp.GRUPolicy.for_task(task)):
        cp.lab.train(policy, task, cp.Objective.preset("grpo"), steps=2, group_size=4,
                     prompts_per_step=2, inner_steps=2, seed=0, progress=False)
p = torch.nn.Parameter(torch.ones(3))
for level in ("off", "cheap", "full"):
    opt = InstrumentedAdamW([p], diagnostics=level)
    p.grad = torch.ones(3)
    opt.step()
    opt.zero_grad()
assert p.grad is None
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_small_parameters_are_read_in_batches_and_match_the_reference(monkeypatch, tensor_lr, maximize):
    """Parameters under CHUNKED_STEP_SIZE take torch's loop; their statistics are read a batch at a time:
    consecutive parameters with the same t and at most CHUNK elements in all. Here 40 small parameters
    (231 elements, 17 per batch), one of which misses its gradient every third step (a different t), next
    to one chunked parameter; the diagnostics match the fp64 reference, the parameters torch's."""
    passes = []
    original = optim._chunk_stats_from_state
    monkeypatch.setattr(optim, "_chunk_stats_from_state",
                        lambda g, *a: passes.append(g.numel()) or original(g, *a))
    gen = torch.Generator().manual_seed(3)
    shapes = [(TEST_CHUNK + 5,), *[(33, 7)] * 40]
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
    ref_params = [torch.nn.Parameter(x.clone()) for x in start]
    got_params = [torch.nn.Parameter(x.clone()) for x in start]
    lr = torch.tensor(1e-2) if tensor_lr else 1e-2
    kw = dict(lr=lr, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.1, maximize=maximize, foreach=False)
    ref = torch.optim.AdamW(ref_params, **kw)
    got = InstrumentedAdamW(got_params, diagnostics="full", **kw)
    for step in range(9):
        passes.clear()
        for i, (rp, gp) in enumerate(zip(ref_params, got_params, strict=True)):
            grad = torch.randn(rp.shape, dtype=torch.float64, generator=gen) * 1e-3
            grad.view(-1)[::4] = 0
            skip = i == 20 and step % 3 == 1
            rp.grad, gp.grad = (None, None) if skip else (grad.clone(), grad.clone())
        before = [p.detach().clone() for p in ref_params]
        ref.step()
        got.step()
        expected = reference_diagnostics(ref_params, ref, before, 1e-3, 0.9, 0.95, False, maximize)
        for key, value in expected.items():
            assert got.history[key][-1] == pytest.approx(value, rel=1e-9, abs=1e-15), (step, key)
        # batches of 17 x 231 = 3927 elements; once parameter 20 lags behind (it missed step 1), its t
        # differs from its neighbours' and it is read on its own
        if step == 0:
            small = [3927, 3927, 6 * 231]
        elif step % 3 == 1:  # parameter 20 has no gradient: it is left out
            small = [3927, 3927, 5 * 231]
        else:
            small = [3927, 2 * 231, 231, 3927, 3 * 231]
        chunked = [TEST_CHUNK, 5] if tensor_lr else []  # torch's step: the large one is read from the state
        assert passes == chunked + small, step
    assert all(torch.equal(a, b) for a, b in zip(ref_params, got_params, strict=True))
    assert got._snapshots == {} or tensor_lr  # the chunked step keeps no parameter-sized buffer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extremes_of_sqrt_v_hat_are_those_of_the_vector_bit_for_bit(dtype):
    """min/max √v̂ of a chunked parameter (two chunks and a tail): the extremes of the vector torch divides
    by, bit for bit."""
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(2 * TEST_CHUNK + 7, dtype=dtype, generator=gen))
    opt = InstrumentedAdamW([p], betas=(0.9, 0.95), diagnostics="cheap")
    for _ in range(3):
        p.grad = torch.randn(p.shape, dtype=dtype, generator=gen) * torch.rand(p.shape, dtype=dtype,
                                                                              generator=gen) ** 4
        opt.step()
        t = float(opt.state[p]["step"])
        sqrt_v_hat = opt.state[p]["exp_avg_sq"].sqrt() / (1 - 0.95**t) ** 0.5
        assert opt.history["sqrt_v_hat_min"][-1] == float(sqrt_v_hat.min())
        assert opt.history["sqrt_v_hat_max"][-1] == float(sqrt_v_hat.max())


def test_batches_are_runs_of_one_key_that_fill_at_most_a_chunk():
    sizes = [512] * 16 + [512, 512, 100, TEST_CHUNK + 1, 7]
    keys = [0] * 16 + [1] * 5
    tensors = [torch.zeros(n) for n in sizes]
    key_of = {id(t): k for t, k in zip(tensors, keys, strict=True)}
    batches = list(optim._batches(tensors, lambda t: key_of[id(t)]))
    assert [[t.numel() for t in b] for b in batches] == [
        [512] * 8,  # exactly TEST_CHUNK elements: one batch
        [512] * 8,  # and the next one, started because the first was full
        [512, 512, 100],  # the key changed
        [TEST_CHUNK + 1],  # larger than a chunk: a batch of its own
        [7],
    ]
    assert list(optim._batches([], lambda t: 0)) == []


def test_a_group_of_float32_and_float64_parameters_is_read_one_dtype_per_pass(monkeypatch):
    """Small parameters of two dtypes in one group: a batch never mixes them (its θ_{t−1}, g, m and v are
    joined in the parameters' own dtype); parameters stay torch's, diagnostics match the fp64 reference."""
    passes = []
    original = optim._chunk_stats_from_state
    monkeypatch.setattr(optim, "_chunk_stats_from_state",
                        lambda g, *a: passes.append((g.dtype, g.numel())) or original(g, *a))
    gen = torch.Generator().manual_seed(6)
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float64, torch.float32]
    start = [torch.randn(50, dtype=d, generator=gen) for d in dtypes]
    ref_params = [torch.nn.Parameter(x.clone()) for x in start]
    got_params = [torch.nn.Parameter(x.clone()) for x in start]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.1)
    ref = torch.optim.AdamW(ref_params, **kw)
    got = InstrumentedAdamW(got_params, diagnostics="full", **kw)
    for _ in range(4):
        passes.clear()
        for rp, gp in zip(ref_params, got_params, strict=True):
            grad = torch.randn(rp.shape, dtype=rp.dtype, generator=gen) * 1e-3
            rp.grad, gp.grad = grad.clone(), grad.clone()
        before = [p.detach().clone() for p in ref_params]
        ref.step()
        got.step()
        expected = reference_diagnostics(ref_params, ref, before, 1e-3, 0.9, 0.95, False)
        for key, value in expected.items():
            assert got.history[key][-1] == pytest.approx(value, rel=1e-5, abs=1e-12), key
        assert passes == [(torch.float32, 100), (torch.float64, 100), (torch.float32, 50)]
    assert all(torch.equal(a, b) for a, b in zip(ref_params, got_params, strict=True))
