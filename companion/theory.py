"""Closed forms of Props 2, 3 and 7 (paper App. C-D, Eq. 27, 31-38).

Setting of Props 3/7: the advantage gradient vanishes from step T on (the iterate entered the clipped region),
so m_{T+k} = β1^{k+1} m_{T−1} and v_{T+k} = β2^{k+1} v_{T−1}. With Adam's standard bias corrections
(m̂_t = m_t / (1 − β1^t), v̂_t = v_t / (1 − β2^t)) and the preconditioned step u_t = m̂_t / (√v̂_t + ε):

- `momentum_ratio`   m̂_{T+k} / m̂_{T−1}  = β1^{k+1} (1 − β1^{T−1}) / (1 − β1^{T+k})            (exact)
- `sqrt_v_hat_ratio` √v̂_{T+k} / √v̂_{T−1} = √[β2^{k+1} (1 − β2^{T−1}) / (1 − β2^{T+k})]        (exact)
- `c_tk`             C_{T,k} = ‖u_{T+k}‖ / ‖u_{T−1}‖ (Eq. 35) = momentum_ratio / sqrt_v_hat_ratio (Eq. 36)
- `c_t`              C_T = ‖u_T‖ / ‖u_{T−1}‖ (Eq. 31) = C_{T,0}, in closed form               (Eq. 32)

These hold *exactly* (not just approximately, as the paper's "≈" suggests) when ε = 0, for any history of
m and v before T: every coordinate is scaled by the same factor. With ε > 0 the exact ratio is
`c_tk_with_eps`, i.e. Eq. 36 with √v̂_{T−1}/√v̂_{T+k} replaced by Eq. 38's (√v̂_{T−1}+ε)/(√v̂_{T+k}+ε)
(`eps_modulation`). The large-T forms (Eq. 33, 37) are limits, not identities.
"""

import math

import torch


def _check_betas(beta1: float, beta2: float) -> None:
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {beta}")
    if beta2 == 0.0:
        raise ValueError("beta2 must be > 0: v̂ does not decay geometrically otherwise")


def _check_tk(T: int, k: int) -> None:
    if T < 2:
        raise ValueError(f"T must be >= 2 (the last gradient step is T-1 >= 1), got {T}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def momentum_ratio(beta1: float, T: int, k: int = 0) -> float:
    """m̂_{T+k} / m̂_{T−1} once the gradient is 0 from step T on (App. D)."""
    _check_tk(T, k)
    return beta1 ** (k + 1) * (1 - beta1 ** (T - 1)) / (1 - beta1 ** (T + k))


def sqrt_v_hat_ratio(beta2: float, T: int, k: int = 0) -> float:
    """√v̂_{T+k} / √v̂_{T−1} once the gradient is 0 from step T on (App. D)."""
    _check_tk(T, k)
    return math.sqrt(beta2 ** (k + 1) * (1 - beta2 ** (T - 1)) / (1 - beta2 ** (T + k)))


def c_tk(beta1: float, beta2: float, T: int, k: int) -> float:
    """C_{T,k} = ‖u_{T+k}‖ / ‖u_{T−1}‖ (defined in Eq. 35) in the closed form of Eq. 36; exact for ε = 0."""
    _check_betas(beta1, beta2)
    return momentum_ratio(beta1, T, k) / sqrt_v_hat_ratio(beta2, T, k)


def c_t(beta1: float, beta2: float, T: int) -> float:
    """C_T = ‖u_T‖ / ‖u_{T−1}‖ (Eq. 31) in the closed form of Eq. 32,

    [β1 (1−β1^{T−1})/(1−β1^T)] · √[(1−β2^T) / (β2 (1−β2^{T−1}))].
    """
    return c_tk(beta1, beta2, T, 0)


def c_t_limit(beta1: float, beta2: float) -> float:
    """Eq. 33: lim_{T→∞} C_T = β1/√β2 (≈ 0.923 for β1 = 0.9, β2 = 0.95)."""
    _check_betas(beta1, beta2)
    return beta1 / math.sqrt(beta2)


def c_tk_large_t(beta1: float, beta2: float, k: int) -> float:
    """Eq. 37: lim_{T→∞} C_{T,k} = (β1/√β2)^{k+1}."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return c_t_limit(beta1, beta2) ** (k + 1)


def eps_modulation(sqrt_v_hat_before: float, sqrt_v_hat_after: float, eps: float) -> float:
    """Eq. 38's factor (√v̂_{T−1} + ε) / (√v̂_{T+k} + ε), which replaces √v̂_{T−1}/√v̂_{T+k} when ε > 0."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return (sqrt_v_hat_before + eps) / (sqrt_v_hat_after + eps)


def c_tk_with_eps(beta1: float, beta2: float, T: int, k: int, eps: float, sqrt_v_hat_before: float) -> float:
    """Exact C_{T,k} for ε ≥ 0, given √v̂_{T−1}: momentum_ratio · (√v̂_{T−1}+ε) / (√v̂_{T+k}+ε) (Eq. 36 + 38).

    Equals `c_tk` · `eps_modulation` · √v̂_{T+k}/√v̂_{T−1}; it is ≤ `c_tk` (ε damps the amplification).
    """
    _check_betas(beta1, beta2)
    after = sqrt_v_hat_before * sqrt_v_hat_ratio(beta2, T, k)
    return momentum_ratio(beta1, T, k) * eps_modulation(sqrt_v_hat_before, after, eps)


def drift_after_vanishing(beta1: float, beta2: float, T: int, K: int | None = None) -> float:
    """Σ_{k=0}^{K−1} C_{T,k}: the distance travelled after the gradient vanished, in units of lr·‖u_{T−1}‖.

    This is the "post-clip" motion of Prop 3/7 (ε = 0, no weight decay). In the scalar problem with g = 1
    for T−1 steps, ‖u_{T−1}‖ = 1, so it is in units of lr. K = None sums the whole series (requires
    β1 < √β2, which makes the terms decay geometrically).
    """
    if K is not None:
        if K < 0:
            raise ValueError(f"K must be >= 0 or None, got {K}")
        return math.fsum(c_tk(beta1, beta2, T, k) for k in range(K))
    if c_t_limit(beta1, beta2) >= 1:
        raise ValueError(f"the series diverges unless beta1 < sqrt(beta2); got {beta1}, {beta2}")
    terms, k = [], 0
    while True:
        term = c_tk(beta1, beta2, T, k)
        terms.append(term)
        k += 1
        if term < 1e-18 * math.fsum(terms) or term == 0.0:
            return math.fsum(terms)


def drift_limit(beta1: float, beta2: float) -> float:
    """Large-T limit of the total drift (K → ∞): Σ_{k≥0} (β1/√β2)^{k+1} = ρ/(1 − ρ), ρ = β1/√β2 (Eq. 37)."""
    rho = c_t_limit(beta1, beta2)
    if rho >= 1:
        raise ValueError(f"the drift is unbounded unless beta1 < sqrt(beta2); got {beta1}, {beta2}")
    return rho / (1 - rho)


def _sqrt_v_hat_by_group(optimizer: torch.optim.Optimizer) -> list[tuple[float, torch.Tensor]]:
    """(ε, √v̂) for every parameter with Adam state, √v̂ with torch's bias correction at its current step."""
    out = []
    for group in optimizer.param_groups:
        beta2 = float(group["betas"][1])
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or float(state["step"]) == 0:
                continue
            v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
            bc2_sqrt = (1 - beta2 ** float(state["step"])) ** 0.5
            out.append((float(group["eps"]), v.detach().double().sqrt() / bc2_sqrt))
    return out


def adam_state_sqrt_v_hat(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """√v̂ (float64, flattened over all parameters with Adam state) of an Adam/AdamW optimizer."""
    roots = [root.reshape(-1) for _, root in _sqrt_v_hat_by_group(optimizer)]
    return torch.cat(roots) if roots else torch.empty(0, dtype=torch.float64)


def eps_ratio(optimizer: torch.optim.Optimizer, phi: float = 1.0) -> torch.Tensor:
    """Prop 2's threshold ε/(φ√v̂), per coordinate (float64), flattened over all parameters with Adam state.

    If the rewards (hence advantages and gradients, at β = 0) were scaled by φ, the Adam step would be
    m̂ / (√v̂ (1 + ε/(φ√v̂))) (App. C, the unnumbered step before Eq. 27): invariant to φ where this ratio
    is ≪ 1 (Eq. 27 is its limit). Coordinates with v̂ = 0 give +inf (ε dominates completely); with ε = 0
    and v̂ = 0 the ratio is NaN (0/0), as the step is.
    """
    if not phi > 0:
        raise ValueError(f"phi must be > 0, got {phi}")
    ratios = [(eps / (phi * root)).reshape(-1) for eps, root in _sqrt_v_hat_by_group(optimizer)]
    return torch.cat(ratios) if ratios else torch.empty(0, dtype=torch.float64)


def step_shrink_factor(ratio: torch.Tensor | float) -> torch.Tensor | float:
    """1 / (1 + ε/(φ√v̂)): the factor by which ε shrinks the ε = 0 Adam step (the display before Eq. 27)."""
    return 1 / (1 + ratio)


# --- Prop. 2 in practice: which reward scales keep the invariance (chapter 4) -----------------------------
def _moving_roots(sqrt_v_hat: torch.Tensor | float) -> torch.Tensor:
    """√v̂ of the coordinates that moved (v̂ > 0), as a flat float64 tensor; bad input named."""
    roots = torch.as_tensor(sqrt_v_hat, dtype=torch.float64).detach().reshape(-1)
    if bool(torch.isnan(roots).any()) or bool((roots < 0).any()):
        raise ValueError("sqrt_v_hat must be >= 0 (not NaN): read it with adam_state_sqrt_v_hat(optimizer)")
    moving = roots[roots > 0]
    if moving.numel() == 0:
        raise ValueError("sqrt_v_hat has no positive entry: no coordinate has received a gradient yet")
    return moving


def _check_scale_arguments(eps: float, phi: float = 1.0) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not phi > 0:
        raise ValueError(f"phi must be > 0, got {phi}")


def eps_dominated_fraction(sqrt_v_hat: torch.Tensor | float, eps: float, phi: float = 1.0) -> float:
    """Share of the coordinates that moved (v̂ > 0) whose Adam step ε dominates at reward scale φ.

    Dominated means ε ≥ φ√v̂, i.e. ε/(φ√v̂) ≥ 1 in the display before Eq. 27: the step is at most half
    its ε = 0 size. Give the √v̂ of a run at φ = 1 (`adam_state_sqrt_v_hat`); by Prop. 6 the run at φ has
    √v̂* = φ√v̂, so one run predicts every φ. Coordinates with v̂ = 0 never had a gradient and never move:
    they are left out
    (``InstrumentedAdamW``'s ``eps_dominated_frac`` counts them).
    """
    _check_scale_arguments(eps, phi)
    roots = _moving_roots(sqrt_v_hat)
    return float((eps >= phi * roots).double().mean())


def critical_scale(sqrt_v_hat: torch.Tensor | float, eps: float, fraction: float = 0.5) -> float:
    """The reward scale φ below which more than ``fraction`` of the moving coordinates are ε-dominated.

    φ* = ε / q with q the ``fraction``-quantile of √v̂ over the coordinates with v̂ > 0 (Eq. 27): at φ*
    a coordinate at that quantile has ε/(φ√v̂) = 1, and every coordinate below it more.
    """
    _check_scale_arguments(eps)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    return eps / float(torch.quantile(_moving_roots(sqrt_v_hat), fraction))


def smallest_safe_scale(sqrt_v_hat: float, eps: float, tolerance: float = 0.01) -> float:
    """The smallest φ at which ε shrinks the step of a coordinate with this √v̂ by at most ``tolerance``.

    Eq. 27: the step is the ε = 0 step times 1/(1 + ε/(φ√v̂)) ≥ 1 − tolerance ⇔
    φ ≥ ε (1 − tolerance) / (tolerance · √v̂).
    """
    _check_scale_arguments(eps)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}")
    if not sqrt_v_hat > 0:
        raise ValueError(f"sqrt_v_hat must be > 0 (a coordinate that moves), got {sqrt_v_hat}")
    return eps * (1 - tolerance) / (tolerance * sqrt_v_hat)
