"""The conformance references themselves, on tiny cases worked out by hand (SPEC.md has the formulas)."""

import math

import pytest
import torch
from trl_reference import trl_advantages, trl_loss
from verl_reference import (
    verl_actor_loss,
    verl_advantages,
    verl_agg_loss,
    verl_kl,
    verl_policy_loss,
)

LOG = math.log


def close(a: torch.Tensor, b: float) -> bool:
    return abs(float(a.detach()) - b) < 1e-9


def two_rows(ratios=((1.5, 1.0), (0.5, 1.0))):
    """N=2, T=2, second row of length 1, advantages (+1, -1); logprobs chosen to give `ratios`."""
    old = torch.full((2, 2), LOG(0.25), dtype=torch.float64)
    logp = (old + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    return logp, old, adv, mask


# ---- TRL advantages -------------------------------------------------------------------------------------


def test_trl_group_advantages_bessel_std_plus_1e4():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    adv = trl_advantages(r, 4)
    # group 1: mean 0.25, Bessel std 0.5; group 2: tied -> 0, not NaN
    expected = [0.75 / 0.5001] + [-0.25 / 0.5001] * 3 + [0.0] * 4
    assert torch.allclose(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_trl_batch_and_none_scaling_and_legacy_booleans():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0], dtype=torch.float64)
    centred = torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64)
    batch_std = math.sqrt(((1 - 1.75) ** 2 + 1.75**2 + 2 * 1.25**2) / 3)
    assert torch.allclose(trl_advantages(r, 2, scale_rewards="batch"), centred / (batch_std + 1e-4))
    assert torch.equal(trl_advantages(r, 2, scale_rewards="none"), centred)
    assert torch.equal(trl_advantages(r, 2, scale_rewards=False), centred)
    assert torch.equal(trl_advantages(r, 2, scale_rewards=True), trl_advantages(r, 2))


# ---- TRL losses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_type", "value", "grad"),
    [
        # per-token losses: row 0 (A=+1): -1.2 (clipped), -1.0 ; row 1 (A=-1): +0.8 (clipped)
        ("grpo", ((-1.2 - 1.0) / 2 + 0.8) / 2, [[0, -0.5 / 2], [0, 0]]),
        ("bnpo", -1.4 / 3, [[0, -1 / 3], [0, 0]]),
        ("dapo", -1.4 / 3, [[0, -1 / 3], [0, 0]]),
        ("dr_grpo", -1.4 / (2 * 4), [[0, -1 / 8], [0, 0]]),
    ],
)
def test_trl_clipped_losses_by_hand(loss_type, value, grad):
    logp, old, adv, mask = two_rows()
    loss = trl_loss(logp, old, adv, mask, loss_type=loss_type, max_completion_length=4)
    loss.backward()
    assert close(loss, value)
    assert torch.allclose(logp.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-12)


def test_trl_cispo_uses_epsilon_high_as_the_weight_cap():
    logp, old, adv, mask = two_rows()
    loss = trl_loss(logp, old, adv, mask, loss_type="cispo", epsilon_high=1.3)
    loss.backward()
    # weights sg(min(r, 1.3)) = [[1.3, 1.0], [0.5, -]]; gradient -w*A/3 per token
    assert torch.allclose(logp.grad, torch.tensor([[-1.3 / 3, -1 / 3], [0.5 / 3, 0]], dtype=torch.float64))
    expected = -(1.3 * logp[0, 0] + 1.0 * logp[0, 1] - 0.5 * logp[1, 0]) / 3
    assert close(loss, float(expected.detach()))


def test_trl_delta_caps_the_unclipped_branch():
    logp, old, adv, mask = two_rows(ratios=((1.0, 1.0), (4.0, 1.0)))
    loss = trl_loss(logp, old, adv, mask, loss_type="bnpo", delta=1.5)
    # row 1 (A=-1, r=4): -min(-1.5, -1.2) = 1.5 and no gradient
    assert close(loss, (-1 - 1 + 1.5) / 3)


def test_trl_sapo_at_ratio_one_value_and_gradient():
    logp, old, adv, mask = two_rows(ratios=((1.0, 1.0), (1.0, 1.0)))
    loss = trl_loss(logp, old, adv, mask, loss_type="sapo")
    loss.backward()
    # gate sigmoid(0)*4/tau = 2/tau ; d gate / d logp = tau/4 * 4/tau * r = 1 at r = 1
    assert close(loss, (-2.0 + 2.0 / 1.05) / 2)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.5, 0.0]], dtype=torch.float64))


def test_trl_sequence_level_ratio_is_the_geometric_mean():
    logp, old, adv, mask = two_rows(ratios=((1.21, 1.0), (1.0, 1.0)))
    loss = trl_loss(logp, old, adv, mask, loss_type="grpo", importance_sampling_level="sequence")
    loss.backward()
    # row 0: s = sqrt(1.21) = 1.1 (inside the clip), loss -1.1 ; row 1: s = 1, loss +1
    assert close(loss, (-1.1 + 1.0) / 2)
    assert torch.allclose(logp.grad, torch.tensor([[-1.1 / 4, -1.1 / 4], [0.5, 0]], dtype=torch.float64))


@pytest.mark.parametrize("bias_correction", [False, True])
def test_trl_k3_kl_with_and_without_bias_correction(bias_correction):
    logp, old, _, mask = two_rows(ratios=((1.0, 1.0), (1.0, 1.0)))
    ref = logp.detach() + LOG(2.0)  # pi_ref / pi = 2 on every token
    zero_adv = torch.zeros(2, dtype=torch.float64)
    loss = trl_loss(
        logp, old, zero_adv, mask, ref, loss_type="bnpo", beta=0.1, use_bias_correction_kl=bias_correction
    )
    loss.backward()
    k3 = 2.0 - LOG(2.0) - 1.0
    # d k3 / d logp = -2 + 1 = -1 ; with the ratio factor (r = 1, dr/dlogp = 1) the gradient gains k3
    per_token_grad = 0.1 * (-1.0 + (k3 if bias_correction else 0.0)) / 3
    assert close(loss, 0.1 * k3)
    assert torch.allclose(logp.grad, per_token_grad * mask)


# ---- verl advantages ------------------------------------------------------------------------------------


def test_verl_grpo_advantages_bessel_std_plus_1e6():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64)
    assert torch.allclose(verl_advantages(r, 4), expected / (0.5 + 1e-6), atol=1e-12)
    assert torch.equal(verl_advantages(r, 4, norm_adv_by_std_in_grpo=False), expected)


def test_verl_rloo_and_gpg_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    rloo = verl_advantages(r, 4, adv_estimator="rloo")
    assert torch.allclose(rloo[:4], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3], dtype=torch.float64))
    gpg = verl_advantages(r, 4, adv_estimator="gpg")  # alpha = 8 / 3 nonzero rewards
    assert torch.allclose(gpg[4:], 8 / 3 * torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=torch.float64))


def test_verl_reinforce_pp_whitens_over_tokens():
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    adv = verl_advantages(r, 2, adv_estimator="reinforce_plus_plus", mask=mask)
    # token returns 1, 1, 0: mean 2/3, Bessel variance 1/3
    s = 1 / math.sqrt(1 / 3 + 1e-8)
    expected = torch.tensor([[s / 3, s / 3], [-2 * s / 3, 0.0]], dtype=torch.float64)
    assert torch.allclose(adv, expected, atol=1e-7)


# ---- verl losses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value"),
    [
        ("token-mean", 6 / 3),
        ("token-sum", 6.0),
        ("seq-mean-token-sum", (3 + 3 + 0) / 3),  # divided by N = 3 rows, the empty row included
        ("seq-mean-token-mean", (1.5 + 3 + 0) / 3),
        ("seq-mean-token-sum-norm", (3 + 3 + 0) / 3 / 2),  # horizon T = 2
    ],
)
def test_verl_agg_loss_modes(mode, value):
    mat = torch.tensor([[1.0, 2.0], [3.0, 50.0], [7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert abs(float(verl_agg_loss(mat, mask, mode)) - value) < 1e-7
    if mode == "seq-mean-token-sum-norm":
        assert close(verl_agg_loss(mat, mask, mode, loss_scale_factor=4), 2 / 4)


def test_verl_vanilla_dual_clip():
    logp, old, _, mask = two_rows(ratios=((5.0, 2.0), (1.0, 1.0)))
    adv = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    loss = verl_policy_loss(logp, old, adv, mask, loss_agg_mode="token-sum")
    loss.backward()
    # A=-1: r=5 -> min(3, max(5, 1.2)) = 3 (no gradient) ; r=2 -> min(3, 2) = 2 (gradient -A r = 2)
    assert close(loss, 5.0)
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64))


def test_verl_sapo_ignores_loss_agg_mode():
    logp, old, adv, mask = two_rows(ratios=((1.3, 0.9), (0.7, 1.0)))
    values = {
        m: float(verl_policy_loss(logp, old, adv, mask, policy_loss="sapo", loss_agg_mode=m).detach())
        for m in ("token-mean", "token-sum", "seq-mean-token-sum")
    }
    assert len(set(values.values())) == 1


def test_verl_geo_mean_sign_aware_log_clip():
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.5]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    pos = verl_policy_loss(logp, old, torch.tensor([1.0]).double(), mask, policy_loss="geo_mean")
    neg = verl_policy_loss(logp, old, torch.tensor([-1.0]).double(), mask, policy_loss="geo_mean")
    assert abs(float(pos) + math.exp(0.15)) < 1e-7  # log-ratios clipped to (0.1, 0.2)
    assert abs(float(neg) - math.exp(0.3)) < 1e-7  # negative advantage: the high side is not clipped


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("k1", LOG(2.0)),
        ("kl", LOG(2.0)),
        ("abs", LOG(2.0)),
        ("k2", 0.5 * LOG(2.0) ** 2),
        ("mse", 0.5 * LOG(2.0) ** 2),
        ("k3", 0.5 + LOG(2.0) - 1.0),
        ("low_var_kl", 0.5 + LOG(2.0) - 1.0),
    ],
)
def test_verl_kl_estimators(kind, value):
    logp = torch.tensor([[LOG(0.5)]], dtype=torch.float64)
    ref = torch.tensor([[LOG(0.25)]], dtype=torch.float64)
    assert close(verl_kl(logp, ref, kind), value)


def test_verl_straight_through_kl_has_k2_gradient():
    logp = torch.tensor([[LOG(0.5)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[LOG(0.25)]], dtype=torch.float64)
    kl = verl_kl(logp, ref, "k3+")
    kl.sum().backward()
    assert close(kl, 0.5 + LOG(2.0) - 1.0)
    assert close(logp.grad, LOG(2.0))  # d/dlogp 0.5 (logp - ref)^2


def test_verl_actor_adds_coef_times_aggregated_kl():
    logp, old, adv, mask = two_rows(ratios=((1.0, 1.0), (1.0, 1.0)))
    ref = logp.detach() - LOG(2.0)
    base = verl_actor_loss(logp, old, adv, mask, ref)
    with_kl = verl_actor_loss(
        logp, old, adv, mask, ref, use_kl_loss=True, kl_loss_coef=0.5, kl_loss_type="k1"
    )
    assert close(with_kl - base, 0.5 * LOG(2.0))
