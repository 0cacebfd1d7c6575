"""Closed forms of Props 2, 3, 7 (Eq. 27, 31-38) checked against InstrumentedAdamW on scalar fp64 problems."""

import math

import numpy as np
import pytest
import torch

from companion import theory
from companion.optim import InstrumentedAdamW

BETA1 = 0.9
LR = 2.0**-10


def vanishing_gradient_run(beta2: float, T: int, K: int, eps: float = 0.0, scale: float = 1.0):
    """Scalar fp64 AdamW: gradient `scale` for steps 1..T−1, exactly 0 for steps T..T+K−1.

    Returns the history and θ after every step (θ[0] is the start).
    """
    p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = InstrumentedAdamW([p], lr=LR, betas=(BETA1, beta2), eps=eps, weight_decay=0.0, diagnostics="full")
    thetas = [p.item()]
    for step in range(1, T + K):
        p.grad = torch.tensor(scale if step < T else 0.0, dtype=torch.float64)
        opt.step()
        thetas.append(p.item())
    return opt.history, np.array(thetas)


CASES = [(beta2, T) for beta2 in (0.95, 0.999) for T in (2, 3, 10, 50, 200)]


@pytest.mark.parametrize(("beta2", "T"), CASES)
def test_c_t_and_c_tk_are_exact_for_eps_zero(beta2, T):
    K = 40
    h, _ = vanishing_gradient_run(beta2, T, K)
    u = h["precond_norm"]  # u[i] is ‖m̂/(√v̂+ε)‖ after step i+1
    assert h["c_t"][T - 1] == pytest.approx(theory.c_t(BETA1, beta2, T), rel=1e-12)  # Eq. 32
    for k in range(K):
        assert u[T - 1 + k] / u[T - 2] == pytest.approx(theory.c_tk(BETA1, beta2, T, k), rel=1e-12)  # Eq. 36
    # the momentum-only motion of Prop 3: no gradient, and yet every step moved the parameter
    assert (h["momentum_only_frac"][T - 1:] == 1.0).all()
    assert (h["update_norm"][T - 1:] > 0).all()


@pytest.mark.parametrize(("beta2", "T"), CASES)
def test_total_drift_after_the_gradient_vanishes(beta2, T):
    K = 60
    _, theta = vanishing_gradient_run(beta2, T, K)
    drift_in_lr = (theta[T - 1] - theta[T - 1 + K]) / LR  # θ after step T−1 minus θ after step T+K−1
    assert drift_in_lr == pytest.approx(theory.drift_after_vanishing(BETA1, beta2, T, K), rel=1e-12)


def test_large_t_limits_eq33_eq37():
    # Eq. 33 with the paper's number: β1/√β2 ≈ 0.923 for (0.9, 0.95).
    assert round(theory.c_t_limit(0.9, 0.95), 3) == 0.923
    # measured on the optimizer, T large enough that β^T underflows relative to 1e-12
    h, _ = vanishing_gradient_run(0.95, 1000, 30)
    u = h["precond_norm"]
    assert h["c_t"][999] == pytest.approx(theory.c_t_limit(BETA1, 0.95), rel=1e-12)
    for k in range(30):
        assert u[999 + k] / u[998] == pytest.approx(theory.c_tk_large_t(BETA1, 0.95, k), rel=1e-12)
    # closed forms converge to their limits for both β2
    for beta2 in (0.95, 0.999):
        assert theory.c_t(BETA1, beta2, 100_000) == pytest.approx(theory.c_t_limit(BETA1, beta2), rel=1e-12)
        assert theory.c_tk(BETA1, beta2, 100_000, 7) == pytest.approx(
            theory.c_tk_large_t(BETA1, beta2, 7), rel=1e-12)
        assert theory.drift_after_vanishing(BETA1, beta2, 100_000) == pytest.approx(
            theory.drift_limit(BETA1, beta2), rel=1e-12)
        # at finite T the limit is *not* exact: β2 = 0.999 with T = 50 is far from it
    assert abs(theory.c_t(BETA1, 0.999, 50) / theory.c_t_limit(BETA1, 0.999) - 1) > 1e-3


def test_drift_limit_against_a_long_optimizer_run():
    K = 600  # (β1/√β2)^600 ≈ 1e-21
    _, theta = vanishing_gradient_run(0.95, 1000, K)
    assert (theta[999] - theta[999 + K]) / LR == pytest.approx(theory.drift_limit(BETA1, 0.95), rel=1e-12)


@pytest.mark.parametrize("beta2", [0.95, 0.999])
@pytest.mark.parametrize("T", [5, 50])
def test_eps_modulation_eq38_is_exact_and_matters(beta2, T):
    eps, scale, K = 1e-3, 2e-3, 30  # ε comparable to √v̂ ≈ 2e-3
    h, _ = vanishing_gradient_run(beta2, T, K, eps=eps, scale=scale)
    u = h["precond_norm"]
    root_before = h["sqrt_v_hat_mean"][T - 2]  # scalar problem: √v̂_{T−1}
    for k in range(K):
        measured = u[T - 1 + k] / u[T - 2]
        exact = theory.c_tk_with_eps(BETA1, beta2, T, k, eps, root_before)
        assert measured == pytest.approx(exact, rel=1e-12)
        root_after = h["sqrt_v_hat_mean"][T - 1 + k]
        assert root_after == pytest.approx(root_before * theory.sqrt_v_hat_ratio(beta2, T, k), rel=1e-12)
        factor = theory.eps_modulation(root_before, root_after, eps)
        assert exact == pytest.approx(theory.c_tk(BETA1, beta2, T, k) * factor * root_after / root_before,
                                      rel=1e-12)
        assert measured < theory.c_tk(BETA1, beta2, T, k) * (1 - 1e-3)  # ε damps the post-clip steps


def test_eps_ratio_is_evaluated_on_the_optimizer_state():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = InstrumentedAdamW([p], eps=1e-8, betas=(0.9, 0.95))
    p.grad = torch.tensor([1.0, 1e-4, 1e-9, 0.0], dtype=torch.float64)
    opt.step()
    ratio = theory.eps_ratio(opt, phi=10.0)
    # one step: v̂ = g², so ε/(φ√v̂) = ε/(φ|g|)
    np.testing.assert_allclose(ratio[:3].numpy(), [1e-9, 1e-5, 1.0], rtol=1e-12)
    assert math.isinf(ratio[3])
    assert theory.step_shrink_factor(ratio[2]).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="phi"):
        theory.eps_ratio(opt, phi=0.0)


def run_scaled(phi: float, eps: float, steps: int = 40):
    """Gradients g_t·φ from a fixed stream (independent of θ), β = 0 in the objective's terms (Prop 2)."""
    p = torch.nn.Parameter(torch.zeros(64, dtype=torch.float64))
    opt = InstrumentedAdamW([p], lr=1e-2, eps=eps, weight_decay=0.1, betas=(0.9, 0.95), diagnostics="off")
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        p.grad = phi * torch.randn(64, dtype=torch.float64, generator=gen) * torch.logspace(-6, 0, 64,
                                                                                               dtype=torch.float64)
        opt.step()
    return p.detach(), opt


def test_prop2_scaling_invariance_exact_without_eps():
    base, _ = run_scaled(1.0, eps=0.0)
    for phi in (2.0**-20, 2.0**-3, 2.0**7, 2.0**30):  # powers of two scale m, v exactly (Prop 6)
        scaled, _ = run_scaled(phi, eps=0.0)
        assert torch.equal(scaled, base)


def test_prop2_eps_breaks_invariance_exactly_as_eq27_says():
    eps = 1e-6
    _, ref = run_scaled(1.0, eps=eps)
    state_ref = ref.state[ref.param_groups[0]["params"][0]]
    errors = []
    no_eps, _ = run_scaled(1.0, eps=0.0)
    for phi in (2.0**-4, 1.0, 2.0**8, 2.0**20):
        theta, opt = run_scaled(phi, eps=eps)
        state = opt.state[opt.param_groups[0]["params"][0]]
        assert torch.equal(state["exp_avg"], phi * state_ref["exp_avg"])  # m* = φm
        assert torch.equal(state["exp_avg_sq"], phi**2 * state_ref["exp_avg_sq"])  # v* = φ²v
        # Eq. 27: the step is m̂/(√v̂ (1 + ε/(φ√v̂))), with m̂, v̂ of the *unscaled* run
        bc1, bc2 = 1 - 0.9**40, 1 - 0.95**40
        m_hat = state["exp_avg"] / bc1
        root = state["exp_avg_sq"].sqrt() / math.sqrt(bc2)
        u_scaled = m_hat / (root + eps)
        u_ref = (state_ref["exp_avg"] / bc1) / (state_ref["exp_avg_sq"].sqrt() / math.sqrt(bc2))
        predicted = u_ref * theory.step_shrink_factor(theory.eps_ratio(ref, phi=phi))
        np.testing.assert_allclose(u_scaled.numpy(), predicted.numpy(), rtol=1e-12)
        errors.append((theta - no_eps).abs().max().item())
    # as ε/(φ√v̂) → 0 the trajectory approaches the ε = 0 one (the invariance of Prop 2)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6 * errors[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta1"):
        theory.c_t(1.0, 0.95, 5)
    with pytest.raises(ValueError, match="beta2"):
        theory.c_tk(0.9, 1.5, 5, 0)
    with pytest.raises(ValueError, match="T must be"):
        theory.c_t(0.9, 0.95, 1)
    with pytest.raises(ValueError, match="k must be"):
        theory.c_tk(0.9, 0.95, 5, -1)
    with pytest.raises(ValueError, match="diverges"):
        theory.drift_after_vanishing(0.99, 0.9, 10)
    with pytest.raises(ValueError, match="unbounded"):
        theory.drift_limit(0.99, 0.9)
    with pytest.raises(ValueError, match="eps"):
        theory.eps_modulation(1.0, 1.0, -1.0)


# --- Prop. 2 in practice: which reward scales keep the invariance (chapter 4) -----------------------------
def test_eps_dominated_fraction_counts_moving_coordinates_only():
    roots = torch.tensor([0.0, 0.0, 1e-6, 1e-4, 1e-2, 1.0], dtype=torch.float64)
    assert theory.eps_dominated_fraction(roots, eps=1e-8) == 0.0
    assert theory.eps_dominated_fraction(roots, eps=1e-8, phi=1e-2) == pytest.approx(0.25)  # 1e-6 * 1e-2
    assert theory.eps_dominated_fraction(roots, eps=1e-4) == pytest.approx(0.5)  # ε ≥ √v̂ counts (ratio 1)
    assert theory.eps_dominated_fraction(roots, eps=1.0, phi=1e-3) == 1.0


def test_eps_dominated_fraction_predicts_a_scaled_optimizer_state():
    """Prop. 6 (√v̂* = φ√v̂): the fraction read off a run at φ equals the one predicted from the run at 1."""
    predicted, measured = [], []
    _, ref = run_scaled(1.0, eps=0.0)
    roots = theory.adam_state_sqrt_v_hat(ref)
    for phi in (2.0**-30, 2.0**-20, 2.0**-10, 1.0):
        _, opt = run_scaled(phi, eps=0.0)
        measured.append(theory.eps_dominated_fraction(theory.adam_state_sqrt_v_hat(opt), eps=1e-9))
        predicted.append(theory.eps_dominated_fraction(roots, eps=1e-9, phi=phi))
    assert measured == predicted
    assert predicted[0] > 0.9 and predicted[-1] < 0.1 and predicted == sorted(predicted, reverse=True)


def test_critical_scale_is_where_the_fraction_is_reached():
    roots = torch.logspace(-6, -2, 401, dtype=torch.float64)
    for eps, fraction in ((1e-8, 0.5), (1e-5, 0.1), (1e-8, 0.9)):
        phi = theory.critical_scale(roots, eps, fraction)
        assert theory.eps_dominated_fraction(roots, eps, phi * 1.001) < fraction
        assert theory.eps_dominated_fraction(roots, eps, phi / 1.001) >= fraction
    assert theory.critical_scale(torch.tensor([0.0, 2e-3, 2e-3]), 1e-8) == pytest.approx(5e-6)


def test_smallest_safe_scale_keeps_the_step_within_the_tolerance():
    for root, eps, tolerance in ((1e-3, 1e-8, 0.01), (3e-5, 1e-5, 0.1)):
        phi = theory.smallest_safe_scale(root, eps, tolerance)
        shrink = theory.step_shrink_factor(eps / (phi * root))
        assert shrink == pytest.approx(1 - tolerance, rel=1e-12)
        assert theory.step_shrink_factor(eps / (2 * phi * root)) > 1 - tolerance
    assert theory.smallest_safe_scale(1e-3, 0.0) == 0.0  # ε = 0: every scale is safe


def test_scale_helpers_name_bad_arguments():
    roots = torch.tensor([1e-3, 2e-3])
    for call, word in ((lambda: theory.eps_dominated_fraction(roots, -1.0), "eps"),
                       (lambda: theory.eps_dominated_fraction(roots, 1e-8, phi=0.0), "phi"),
                       (lambda: theory.eps_dominated_fraction(torch.zeros(3), 1e-8), "no positive"),
                       (lambda: theory.eps_dominated_fraction(torch.tensor([-1.0]), 1e-8), "sqrt_v_hat"),
                       (lambda: theory.critical_scale(roots, 1e-8, fraction=1.0), "fraction"),
                       (lambda: theory.smallest_safe_scale(1e-3, 1e-8, tolerance=0.0), "tolerance"),
                       (lambda: theory.smallest_safe_scale(0.0, 1e-8), "sqrt_v_hat")):
        with pytest.raises(ValueError, match=word):
            call()
# --- issue 13: state edge cases and boundaries (perf) -------------------------------------------------
def _two_parameter_adamw(amsgrad: bool = False):
    """Two fp64 parameters; only the first has a gradient at the first step."""
    a = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = torch.optim.AdamW([a, b], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, amsgrad=amsgrad)
    return a, b, opt


def test_eps_ratio_without_any_state_is_empty():
    _, _, opt = _two_parameter_adamw()
    for values in (theory.eps_ratio(opt), theory.adam_state_sqrt_v_hat(opt)):
        assert values.dtype == torch.float64 and values.shape == (0,)


def test_a_parameter_without_state_is_skipped_not_counted_as_zero():
    a, b, opt = _two_parameter_adamw()
    a.grad = torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64)
    opt.step()  # b had no gradient: torch keeps no state for it
    assert b not in opt.state
    # one step: v̂ = g², √v̂ = |g| (with torch's bias correction at t = 1)
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(), [2.0, 0.5, 1e-3], rtol=1e-12)
    expected = 1e-8 / (2.0 * np.array([2.0, 0.5, 1e-3]))
    np.testing.assert_allclose(theory.eps_ratio(opt, phi=2.0).numpy(), expected, rtol=1e-12)
    b.grad = torch.tensor([4.0, 0.0], dtype=torch.float64)
    a.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()  # a at t = 2, b at t = 1: each with its own bias correction, a first
    root_a = torch.tensor([2.0, 0.5, 1e-3], dtype=torch.float64) * math.sqrt(0.95 * 0.05 / (1 - 0.95**2))
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(),
                               [*root_a.tolist(), 4.0, 0.0], rtol=1e-12)
    ratio = theory.eps_ratio(opt)
    assert math.isinf(ratio[-1]) and ratio[-1] > 0  # v̂ = 0: ε dominates completely


def test_after_reset_moments_the_state_counts_as_empty_until_the_next_step():
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = InstrumentedAdamW([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    p.grad = torch.tensor([3.0, 1.0], dtype=torch.float64)
    opt.step()
    opt.reset_moments()  # t = 0: no bias correction is defined, so no √v̂ either
    assert theory.adam_state_sqrt_v_hat(opt).shape == (0,) and theory.eps_ratio(opt).shape == (0,)
    p.grad = torch.tensor([0.5, 2.0], dtype=torch.float64)
    opt.step()  # a first step again: v̂ = g²
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(), [0.5, 2.0], rtol=1e-12)


def test_amsgrad_uses_the_running_maximum_of_v():
    a, _, opt = _two_parameter_adamw(amsgrad=True)
    a.grad = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    opt.step()
    a.grad = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    opt.step()
    state = opt.state[a]
    assert (state["max_exp_avg_sq"] > state["exp_avg_sq"]).any()
    expected = state["max_exp_avg_sq"].sqrt() / math.sqrt(1 - 0.95**2)
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(), expected.numpy(), rtol=1e-15)
    np.testing.assert_allclose(theory.eps_ratio(opt).numpy(), (1e-8 / expected).numpy(), rtol=1e-15)


def test_eps_ratio_uses_each_group_s_own_eps_and_beta2():
    a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([{"params": [a], "eps": 1e-6, "betas": (0.9, 0.5)},
                            {"params": [b], "eps": 1e-3, "betas": (0.9, 0.99)}])
    for grad in (1.0, 0.0):
        a.grad = torch.tensor([grad], dtype=torch.float64)
        b.grad = torch.tensor([grad], dtype=torch.float64)
        opt.step()
    # v after 2 steps: (1 − β2) β2; bias-corrected by 1 − β2²: √v̂ = √(β2 / (1 + β2))
    roots = [math.sqrt(0.5 / 1.5), math.sqrt(0.99 / 1.99)]
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(), roots, rtol=1e-12)
    np.testing.assert_allclose(theory.eps_ratio(opt).numpy(), [1e-6 / roots[0], 1e-3 / roots[1]], rtol=1e-12)


def test_eps_ratio_zero_eps_and_zero_v_is_nan_as_the_step_is():
    a, _, opt = _two_parameter_adamw()
    opt.param_groups[0]["eps"] = 0.0
    a.grad = torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64)
    opt.step()
    ratio = theory.eps_ratio(opt)
    assert ratio[0] == 0.0 and math.isnan(ratio[1]) and ratio[2] == 0.0


@pytest.mark.parametrize("phi", [-1.0, 0.0, float("nan")])
def test_eps_ratio_rejects_a_non_positive_phi(phi):
    _, _, opt = _two_parameter_adamw()
    with pytest.raises(ValueError, match="phi"):
        theory.eps_ratio(opt, phi=phi)


def test_beta_boundaries():
    # beta1 = 0 (no momentum) is allowed: m̂ = g, and with the gradient gone the step is 0 at once
    assert theory.c_t(0.0, 0.95, 5) == 0.0 and theory.drift_after_vanishing(0.0, 0.95, 5) == 0.0
    assert theory.c_tk_large_t(0.0, 0.95, 3) == 0.0 and theory.drift_limit(0.0, 0.95) == 0.0
    for beta1, beta2, word in ((1.0, 0.95, "beta1"), (-0.1, 0.95, "beta1"), (0.9, 1.0, "beta2"),
                               (0.9, -0.5, "beta2"), (0.9, 0.0, "beta2")):
        for call, args in ((theory.c_t, (beta1, beta2, 5)), (theory.c_t_limit, (beta1, beta2)),
                           (theory.c_tk_with_eps, (beta1, beta2, 5, 0, 1e-8, 1.0))):
            with pytest.raises(ValueError, match=rf"^{word} must"):
                call(*args)
    # just inside the bounds the closed forms stay finite
    assert math.isfinite(theory.c_t(0.999999, 0.999999, 2))
    # beta1 = sqrt(beta2) is the edge of convergence: the whole series diverges
    with pytest.raises(ValueError, match="diverges"):
        theory.drift_after_vanishing(0.9, 0.81, 10)
    with pytest.raises(ValueError, match="unbounded"):
        theory.drift_limit(0.9, 0.81)


def test_t_and_k_boundaries():
    # T = 2 is the first valid T: one gradient step, then C_2 = β1 (1 − β1) / (1 − β1²) / √(...)
    expected = (0.9 * 0.1 / (1 - 0.81)) / math.sqrt(0.95 * 0.05 / (1 - 0.95**2))
    assert theory.c_t(0.9, 0.95, 2) == pytest.approx(expected, rel=1e-15)
    assert theory.momentum_ratio(0.9, 2, 0) == pytest.approx(0.9 * 0.1 / 0.19, rel=1e-15)
    assert theory.sqrt_v_hat_ratio(0.95, 2, 0) == pytest.approx(math.sqrt(0.95 * 0.05 / (1 - 0.95**2)),
                                                                  rel=1e-15)
    for call in (lambda: theory.momentum_ratio(0.9, 1), lambda: theory.sqrt_v_hat_ratio(0.95, 1),
                 lambda: theory.c_tk(0.9, 0.95, 1, 0)):
        with pytest.raises(ValueError, match="T must be"):
            call()
    for call in (lambda: theory.momentum_ratio(0.9, 5, -1), lambda: theory.sqrt_v_hat_ratio(0.95, 5, -1),
                 lambda: theory.c_tk_large_t(0.9, 0.95, -1)):
        with pytest.raises(ValueError, match="k must be"):
            call()
    # K = 0 terms travel nowhere; K = 1 is C_{T,0} = C_T; K < 0 is an error
    assert theory.drift_after_vanishing(0.9, 0.95, 5, K=0) == 0.0
    assert theory.drift_after_vanishing(0.9, 0.95, 5, K=1) == theory.c_t(0.9, 0.95, 5)
    assert theory.drift_after_vanishing(0.9, 0.95, 5, K=3) == pytest.approx(
        sum(theory.c_tk(0.9, 0.95, 5, k) for k in range(3)), rel=1e-15)
    with pytest.raises(ValueError, match="K must be"):
        theory.drift_after_vanishing(0.9, 0.95, 5, K=-1)
    # k defaults to 0: the first step after the gradient vanished
    first = 0.9 * (1 - 0.9**4) / (1 - 0.9**5)
    assert theory.momentum_ratio(0.9, 5) == theory.momentum_ratio(0.9, 5, 0)
    assert theory.momentum_ratio(0.9, 5) == pytest.approx(first, rel=1e-15)
    assert theory.sqrt_v_hat_ratio(0.95, 5) == theory.sqrt_v_hat_ratio(0.95, 5, 0)
    # k = 0 of the large-T form is the limit of C_T itself
    assert theory.c_tk_large_t(0.9, 0.95, 0) == theory.c_t_limit(0.9, 0.95) == 0.9 / math.sqrt(0.95)


def test_eps_modulation_boundaries():
    assert theory.eps_modulation(2.0, 0.5, 0.0) == 4.0  # ε = 0: the plain ratio of √v̂
    assert theory.eps_modulation(2.0, 0.5, 1.0) == 3.0 / 1.5
    assert theory.c_tk_with_eps(0.9, 0.95, 5, 2, 0.0, 1.0) == pytest.approx(theory.c_tk(0.9, 0.95, 5, 2),
                                                                            rel=1e-14)
    assert theory.step_shrink_factor(0.0) == 1.0 and theory.step_shrink_factor(1.0) == 0.5


def test_a_parameter_without_state_before_one_with_state_is_skipped():
    first = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))  # never gets a gradient
    second = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = torch.optim.AdamW([first, second], betas=(0.9, 0.95), eps=1e-8)
    second.grad = torch.tensor([3.0, 0.25], dtype=torch.float64)
    opt.step()
    np.testing.assert_allclose(theory.adam_state_sqrt_v_hat(opt).numpy(), [3.0, 0.25], rtol=1e-12)
    np.testing.assert_allclose(theory.eps_ratio(opt).numpy(), [1e-8 / 3.0, 1e-8 / 0.25], rtol=1e-12)
