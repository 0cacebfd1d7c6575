"""companion.objective: every preset against the per-token reference, the diagnostics, Props 1, 4 (App. A)
and 5, property tests over random batches, and bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from eq1_reference import reference_loss
from hypothesis import given, settings
from hypothesis import strategies as st

import companion as cp
from companion import methods
from companion import objective as objective_module
from companion.objective import conflict_tokens

REFERENCE_PRESETS = ("grpo_r1", "grpo_v32", "gspo", "gtpo", "dapo", "cppo", "dr_grpo", "gpg", "cispo", "gcpo",
                     "ppo", "rloo", "reinforce_pp")
TOL = 1e-10


def batch(seed: int, n_groups: int = 3, group_size: int = 4, horizon: int = 6, spread: float = 0.25):
    """Ragged fp64 batch: log-ratios ~ N(0, spread²) (some beyond the clip), two rows pushed far off-policy,
    0/1/2 rewards with one tied group, tokens from a 3-letter vocabulary (shared prefixes and suffixes)."""
    g = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0], lengths[-1] = 1, horizon
    mask = (torch.arange(horizon) < lengths.unsqueeze(1)).to(torch.float64)
    old = -0.1 - 2.0 * torch.rand(n, horizon, generator=g, dtype=torch.float64)
    lp = old + spread * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    lp[2] = old[2] - 0.9  # far below pi_old: DeepSeek-V3.2's mask drops it if its advantage is negative
    lp[5] = old[5] - 0.8
    ref = old + 0.3 * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    rewards = torch.randint(0, 3, (n,), generator=g).to(torch.float64)
    rewards[:group_size] = torch.tensor([0.0, 1.0, 0.0, 2.0])[:group_size]
    rewards[-group_size:] = 1.0
    tokens = torch.randint(0, 3, (n, horizon), generator=g)
    entropies = 1.2 * torch.rand(n, horizon, generator=g, dtype=torch.float64)
    return dict(lp=lp, old=old, ref=ref, mask=mask, rewards=rewards, tokens=tokens, entropies=entropies,
                group_size=group_size)


def objective_loss(obj, b, lp, adv=None):
    adv = obj.advantages(b["rewards"], b["group_size"], b["mask"]) if adv is None else adv
    return obj.loss(lp, b["old"], adv, b["mask"], ref_logprobs=b["ref"], tokens=b["tokens"],
                    entropies=b["entropies"], group_size=b["group_size"])


def value_and_grad(fn, lp):
    x = lp.clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


# --- every preset against the reference -------------------------------------------------------------------
@pytest.mark.parametrize("name", REFERENCE_PRESETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preset_matches_the_per_token_reference(name, seed):
    b = batch(seed)
    obj = cp.Objective.preset(name)
    ours, g_ours = value_and_grad(lambda x: objective_loss(obj, b, x).loss, b["lp"])
    theirs, g_theirs = value_and_grad(
        lambda x: reference_loss(name, x, b["old"], b["rewards"], b["mask"], b["ref"], b["group_size"],
                                 b["tokens"], b["entropies"]), b["lp"])
    assert g_theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(g_ours, g_theirs, atol=TOL, rtol=0)


def test_the_reference_cases_exercise_the_masks_and_filters():
    """The batches above do reach the branches that make methods differ (else the test above is weak)."""
    b = batch(0)
    v32 = objective_loss(cp.Objective.preset("grpo_v32"), b, b["lp"])
    assert (v32.alpha.sum(-1) == 0).any()  # an off-policy negative completion was dropped
    cppo = objective_loss(cp.Objective.preset("cppo"), b, b["lp"])
    assert 0 < int((cppo.alpha.sum(-1) == 0).sum()) < 12
    adv = cp.Objective.preset("gtpo").advantages(b["rewards"], 4)
    conflict = conflict_tokens(b["tokens"], adv, b["mask"], 4)
    assert conflict.any() and not conflict.all()
    gtpo = objective_loss(cp.Objective.preset("gtpo"), b, b["lp"])
    assert (gtpo.alpha.sum(-1) == 0).any()  # the entropy filter dropped a completion
    dapo = objective_loss(cp.Objective.preset("dapo"), b, b["lp"])
    assert dapo.clip_fraction_high > 0 and dapo.clip_fraction_low > 0


def test_every_extra_is_covered_by_the_reference_or_the_trainer_conformance():
    trainer_backed = {"grpo", "bnpo", "sapo", "gmpo"}  # from_trl / from_verl: tests/conformance
    assert set(cp.PRESETS) == set(REFERENCE_PRESETS) | trainer_backed
    assert set(methods.TABLE1) <= set(REFERENCE_PRESETS)


# --- diagnostics ------------------------------------------------------------------------------------------
TRAINER_OBJECTIVES = {
    "trl_delta_below_clip": dict(trl=dict(loss_type="grpo", delta=1.1)),
    "trl_delta_above_clip": dict(trl=dict(loss_type="dapo", delta=1.5, epsilon_high=0.28)),
    "trl_sequence": dict(trl=dict(loss_type="grpo", importance_sampling_level="sequence")),
    "verl_dual_clip": dict(verl=dict(clip_ratio_c=1.3)),
    "verl_cispo": dict(verl=dict(policy_loss="cispo")),
}


def weight_test_objective(name):
    if name in cp.PRESETS:
        return cp.Objective.preset(name, beta=0.0, entropy_coef=0.0)
    (library, config), = TRAINER_OBJECTIVES[name].items()
    return (cp.Objective.from_trl if library == "trl" else cp.Objective.from_verl)(**config)


@pytest.mark.parametrize("name", sorted(cp.PRESETS) + sorted(TRAINER_OBJECTIVES))
def test_weights_are_the_gradient_per_unit_advantage(name):
    """ω_{i,t} (Eq. 15) equals −∂loss/∂log π_t / A_i wherever the gradient is not clipped away (β = 0)."""
    b = batch(3, spread=0.4)
    obj = weight_test_objective(name)
    adv = obj.advantages(b["rewards"], 4, b["mask"])
    out = objective_loss(obj, b, b["lp"].clone().requires_grad_(True), adv)
    (grad,) = torch.autograd.grad(out.loss, out._ctx.logprobs)
    torch.testing.assert_close(out.weights * adv.unsqueeze(1), -grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.sequence_weight, out.weights.sum(-1))


@pytest.mark.parametrize("log_ratio", [math.log(1.15), math.log(1.25), math.log(1.6)])
def test_trl_delta_cap_zeroes_the_gradient_only_where_it_binds(log_ratio):
    """TRL's δ caps the unclipped branch: with A > 0 the gradient stops above δ; with A < 0 only above both δ
    and 1+ε (between them the clipped branch still carries it)."""
    b = batch(3)
    obj = cp.Objective.from_trl(loss_type="grpo", delta=1.1)
    adv = torch.tensor([1.0, -1.0] * 6, dtype=torch.float64)
    lp = (b["old"] + log_ratio).requires_grad_(True)
    out = obj.loss(lp, b["old"], adv, b["mask"])
    (grad,) = torch.autograd.grad(out.loss, lp)
    torch.testing.assert_close(out.weights * adv.unsqueeze(1), -grad, atol=1e-12, rtol=0)
    negative_moves = bool((grad[1::2] != 0).any())
    assert negative_moves == (math.exp(log_ratio) <= 1.2)


def test_clip_fractions_count_the_tokens_whose_gradient_the_clip_zeroes():
    b = batch(4, spread=0.5)
    obj = cp.Objective.preset("dapo")
    adv = obj.advantages(b["rewards"], 4)
    out = obj.loss(b["lp"], b["old"], adv, b["mask"])
    r = (b["lp"] - b["old"]).exp()
    a = adv.unsqueeze(1)
    tokens = b["mask"].sum()
    assert out.clip_fraction_high == (((r > 1.28) & (a > 0)) * b["mask"]).sum() / tokens
    assert out.clip_fraction_low == (((r < 0.8) & (a < 0)) * b["mask"]).sum() / tokens
    clipped = ((r > 1.28) & (a > 0)) | ((r < 0.8) & (a < 0))
    assert torch.all(out.weights[clipped & (b["mask"] > 0)] == 0)
    assert clipped.any() and torch.equal(out.clipped, clipped & (b["mask"] > 0))
    assert out.clip_fraction_dual == 0
    assert set(out.scalars()) == {"loss", "policy_loss", "regulariser", "clip_fraction_low",
                                  "clip_fraction_high", "clip_fraction_dual"}


def test_dual_clip_bounds_negative_advantages():
    b = batch(5, spread=0.3)
    lp = b["lp"].clone()
    lp[1, 0] = b["old"][1, 0] + 1.5  # ratio e^1.5 ≈ 4.5 > c = 3
    obj = cp.Objective.from_verl()
    adv = -torch.ones(12, dtype=torch.float64)
    out = obj.loss(lp, b["old"], adv, b["mask"])
    assert out.clip_fraction_dual > 0 and out.weights[1, 0] == 0
    assert out.clipped[1, 0] and out.clipped.sum() / b["mask"].sum() == pytest.approx(
        float(out.clip_fraction_low + out.clip_fraction_high + out.clip_fraction_dual))


def test_loss_is_policy_loss_plus_regulariser_and_the_regulariser_is_the_kl():
    b = batch(6)
    obj = cp.Objective.preset("grpo_r1")
    out = objective_loss(obj, b, b["lp"])
    torch.testing.assert_close(out.loss, out.policy_loss + out.regulariser)
    kl = torch.exp(b["ref"] - b["lp"]) - (b["ref"] - b["lp"]) - 1
    expected = 0.04 * (kl * b["mask"] / (12 * b["mask"].sum(-1, keepdim=True))).sum()
    torch.testing.assert_close(out.regulariser, expected, atol=1e-14, rtol=0)
    assert "loss=" in repr(out)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_kl_estimators(kind):
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    d = lp - ref
    expected = {"k1": d, "k2": 0.5 * d**2, "k3": torch.exp(-d) + d - 1, "abs": d.abs()}[kind]
    torch.testing.assert_close(cp.objective.kl_estimate(kind, lp, ref), expected)
    straight = cp.objective.kl_estimate(kind, lp.clone().requires_grad_(True), ref, straight_through=True)
    torch.testing.assert_close(straight.detach(), expected)


# --- Prop 1: the shared prefix ------------------------------------------------------------------------------
def shared_prefix_setup(lengths, rewards, prefix=2, perturb=0.0, seed=0):
    """A tabular policy over one prompt; G completions share their first ``prefix`` tokens (the same nodes).
    Returns the logits parameter, the batch, and a function loss(obj) -> LossOutput."""
    torch.manual_seed(seed)
    G, V = len(lengths), 3
    horizon = max(lengths)
    depth_nodes = [torch.randn(V, dtype=torch.float64) for _ in range(prefix)]
    logits = torch.nn.Parameter(torch.stack(depth_nodes))  # the shared prefix nodes
    own = torch.randn(G, horizon, V, dtype=torch.float64)  # every other position: its own node
    tokens = torch.randint(0, V, (G, horizon))
    tokens[:, :prefix] = tokens[0, :prefix]
    mask = (torch.arange(horizon) < torch.tensor(lengths).unsqueeze(1)).to(torch.float64)

    def logprobs():
        rows = []
        for i in range(G):
            per_t = [torch.log_softmax(logits[t] if t < prefix else own[i, t], -1)[tokens[i, t]]
                     for t in range(horizon)]
            rows.append(torch.stack(per_t))
        return torch.stack(rows) * mask

    old = logprobs().detach() + perturb * torch.randn(G, horizon, dtype=torch.float64) * mask
    rewards = torch.tensor(rewards, dtype=torch.float64)

    def loss(obj):
        adv = obj.advantages(rewards, G)
        return obj.loss(logprobs(), old, adv, mask), adv

    return logits, tokens, loss


@pytest.mark.parametrize("name", ["grpo_r1", "dr_grpo", "dapo", "gspo", "gpg", "cispo"])
@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_prop1_prefix_gradient_is_w_agg_times_grad_log_pi(name, perturb):
    """While unclipped, the gradient on the logits of a prefix node shared by the group equals
    −W_agg(t) ∇log π(y_t), with W_agg(t) = Σ_i ω_{i,t} A_i (Eq. 16–18)."""
    logits, tokens, loss = shared_prefix_setup([2, 3, 5, 6], [1.0, 0.0, 1.0, 0.0], perturb=perturb)
    obj = cp.Objective.preset(name, beta=0.0)
    if name == "gspo":  # its ε = 3e-4 clips any perturbed sequence: widen it to stay unclipped
        obj = obj.with_(clip_low=0.2, clip_high=0.2)
    out, adv = loss(obj)
    assert out.clip_fraction_low == 0 and out.clip_fraction_high == 0
    out.loss.backward()
    for t in range(2):
        w_agg = (out.weights[:, t] * adv).sum()
        p = torch.softmax(logits.detach()[t], -1)
        grad_log_pi = torch.nn.functional.one_hot(tokens[0, t], 3).to(torch.float64) - p
        torch.testing.assert_close(logits.grad[t], -w_agg * grad_log_pi, atol=1e-13, rtol=0)


def test_prop1_uniform_weights_cancel_exactly_on_the_shared_prefix():
    """Constant ω (Dr GRPO at s = 1) and rewards whose Σ A_i is exact: the prefix gets exactly 0."""
    logits, _, loss = shared_prefix_setup([2, 3, 5, 6], [1.0, 0.0, 1.0, 0.0])
    out, adv = loss(cp.Objective.preset("dr_grpo", beta=0.0))
    assert adv.sum() == 0
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_prop1_length_normalised_weights_favour_short_positive_completions():
    """ω ∝ 1/|o_i|: with the short completions rewarded, W_agg > 0 pushes the shared prefix up; with the long
    ones rewarded, it pushes it down, although the prefix is the same."""
    obj = cp.Objective.preset("grpo_r1", beta=0.0)
    _, _, short_wins = shared_prefix_setup([2, 2, 6, 6], [1.0, 1.0, 0.0, 0.0])
    _, _, long_wins = shared_prefix_setup([2, 2, 6, 6], [0.0, 0.0, 1.0, 1.0])
    (out_short, adv_short), (out_long, adv_long) = short_wins(obj), long_wins(obj)
    w_short = (out_short.weights[:, 0] * adv_short).sum()
    w_long = (out_long.weights[:, 0] * adv_long).sum()
    assert w_short > 0 > w_long
    torch.testing.assert_close(w_short, -w_long)


# --- Prop 4 (App. A): the surrogate's value at s = 1 --------------------------------------------------------
def on_policy(seed):
    b = batch(seed)
    return b, b["old"].clone()


@pytest.mark.parametrize("name", ["grpo_r1", "gspo", "grpo_v32"])
def test_prop4_length_normalised_weights_make_the_reward_part_zero(name):
    """Ω_i = Σ_t α = 1/N for every completion, so J's reward part is Σ A_i / N = 0 at s = 1 (Eq. 9)."""
    b, lp = on_policy(7)
    out = objective_loss(cp.Objective.preset(name), b, lp)
    assert abs(out.policy_loss) < 1e-15
    if name != "gspo":
        torch.testing.assert_close(out.loss, out.regulariser)  # J = −βR


def test_prop4_constant_weights_give_a_length_statistic():
    """α = 1/N: J = (1/N) Σ_i A_i |o_i| (Eq. 10)."""
    b, lp = on_policy(8)
    obj = cp.Objective.preset("dr_grpo", beta=0.0)
    adv = obj.advantages(b["rewards"], 4)
    out = obj.loss(lp, b["old"], adv, b["mask"])
    torch.testing.assert_close(-out.loss, (adv * b["mask"].sum(-1)).sum() / 12, atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", ["dapo", "dr_grpo", "gcpo", "grpo_r1", "bnpo"])
def test_prop4_general_weights_give_a_covariance(name):
    """J = Σ_i A_i Ω_i = Σ_groups G·Cov_group(A, Ω) at s = 1 (Eq. 11), Ω_i = Σ_t ω_{i,t}."""
    b, lp = on_policy(9)
    obj = cp.Objective.preset(name, beta=0.0)
    adv = obj.advantages(b["rewards"], 4)
    out = obj.loss(lp, b["old"], adv, b["mask"])
    a, omega = adv.view(3, 4), out.sequence_weight.view(3, 4)
    centred = a - a.mean(1, keepdim=True)
    cov = (centred * (omega - omega.mean(1, keepdim=True))).mean(1)
    torch.testing.assert_close(-out.loss, (4 * cov).sum(), atol=1e-15, rtol=0)


# --- Prop 5: advantages under reward scaling ----------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.01, 3.0, 1000.0])
def test_prop5_centred_advantages_scale_with_phi(phi):
    r = batch(10)["rewards"]
    obj = cp.Objective.preset("dr_grpo")
    torch.testing.assert_close(obj.advantages(phi * r, 4), phi * obj.advantages(r, 4), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("phi", [0.01, 3.0, 1000.0])
def test_prop5_sigma_normalised_advantages_do_not(phi):
    r = batch(10)["rewards"]
    exact = cp.Objective.preset("grpo_r1", std_eps=0.0)
    torch.testing.assert_close(exact.advantages(phi * r, 4), exact.advantages(r, 4), atol=1e-12, rtol=1e-12)
    stabilised = cp.Objective.preset("grpo_r1")  # σ + 1e-4: invariant up to the stabiliser's share
    sigma = r.view(3, 4).std(1, keepdim=True).expand(3, 4).reshape(12)
    expected = phi * (sigma + 1e-4) / (phi * sigma + 1e-4) * stabilised.advantages(r, 4)
    torch.testing.assert_close(stabilised.advantages(phi * r, 4), expected, atol=1e-12, rtol=1e-12)


# --- advantages ------------------------------------------------------------------------------------------
def test_advantage_variants_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    centred = cp.Objective(std_scale=None).advantages(r, 4)
    torch.testing.assert_close(centred, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64))
    loo = cp.Objective(baseline="leave_one_out", std_scale=None).advantages(r, 4)
    torch.testing.assert_close(loo[0], torch.tensor(1.0 - 1 / 3, dtype=torch.float64))
    population = cp.Objective(std_correction=0, std_eps=0.0).advantages(r, 4)
    torch.testing.assert_close(population[:4], torch.tensor([1.0, -1, -1, 1], dtype=torch.float64))
    batch_std = cp.Objective(std_scale="batch", std_eps=0.0).advantages(r, 4)
    torch.testing.assert_close(batch_std, centred / r.std())
    gpg = cp.Objective(std_scale=None, gpg_alpha="nonzero_advantage").advantages(r, 4)
    torch.testing.assert_close(gpg, 2 * centred)  # B/(B − M) = 2/(2 − 1)
    verl_gpg = cp.Objective(std_scale=None, gpg_alpha="nonzero_reward").advantages(r, 4)
    torch.testing.assert_close(verl_gpg, 8 / 6 * centred)
    whitened = cp.Objective(baseline="batch_whiten", std_scale=None).advantages(r, 4)
    torch.testing.assert_close(whitened, (r - r.mean()) / torch.sqrt(r.var() + 1e-8))


@pytest.mark.parametrize("name", sorted(cp.PRESETS))
def test_tied_groups_give_zero_advantage_not_nan(name):
    obj = cp.Objective.preset(name)
    r = torch.full((8,), 3.0)
    adv = obj.advantages(r, 4, torch.ones(8, 5))
    assert torch.all(adv == 0)


# --- property tests --------------------------------------------------------------------------------------
@st.composite
def random_batches(draw):
    group_size = draw(st.integers(2, 5))
    n_groups = draw(st.integers(1, 3))
    horizon = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    n = n_groups * group_size
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, horizon + 1, (n,), generator=g)  # empty completions allowed
    mask = (torch.arange(horizon) < lengths.unsqueeze(1)).to(torch.float64)
    old = -3 * torch.rand(n, horizon, generator=g, dtype=torch.float64)
    lp = old + draw(st.floats(0.0, 2.0)) * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    rewards = torch.randint(0, 3, (n,), generator=g).to(torch.float64)
    tokens = torch.randint(0, 2, (n, horizon), generator=g)
    entropies = torch.rand(n, horizon, generator=g, dtype=torch.float64)
    return dict(lp=lp, old=old, ref=ref, mask=mask, rewards=rewards, tokens=tokens, entropies=entropies,
                group_size=group_size)


@settings(max_examples=60, deadline=None)
@given(b=random_batches(), name=st.sampled_from(sorted(cp.PRESETS)))
def test_any_batch_gives_a_finite_loss_that_ignores_padding(b, name):
    obj = cp.Objective.preset(name)
    lp = b["lp"].clone().requires_grad_(True)
    out = objective_loss(obj, b, lp)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.all(torch.isfinite(lp.grad))
    assert torch.all(lp.grad[b["mask"] == 0] == 0)  # padding gets no gradient
    assert torch.all(out.weights[b["mask"] == 0] == 0)
    padded = b["lp"].masked_fill(b["mask"] == 0, -7.0)  # and its values do not matter
    again = objective_loss(obj, {**b, "old": b["old"].masked_fill(b["mask"] == 0, 3.0)}, padded)
    torch.testing.assert_close(again.loss, out.loss.detach(), atol=1e-12, rtol=0)
    for value in out.scalars().values():
        assert torch.isfinite(value)


@settings(max_examples=40, deadline=None)
@given(b=random_batches(), name=st.sampled_from(sorted(cp.PRESETS)))
def test_float32_agrees_with_float64(b, name):
    obj = cp.Objective.preset(name)
    f64 = objective_loss(obj, b, b["lp"]).loss
    b32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
    f32 = objective_loss(obj, b32, b32["lp"]).loss
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), f64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(cp.PRESETS))
def test_presets_run_under_vmap_as_the_lab_batches_seeds(name):
    """torch.func.vmap over a leading seed axis gives each seed exactly its own loss."""
    seeds = [batch(s) for s in (11, 12, 13)]
    keys = ("lp", "old", "ref", "mask", "rewards", "tokens", "entropies")
    stacked = {k: torch.stack([b[k] for b in seeds]) for k in keys}
    obj = cp.Objective.preset(name)

    def one(lp, old, ref, mask, rewards, tokens, entropies):
        adv = obj.advantages(rewards, 4, mask, validate=False)
        return obj.loss(lp, old, adv, mask, ref, tokens=tokens, entropies=entropies, group_size=4,
                        validate=False).loss

    batched = torch.func.vmap(one)(*(stacked[k] for k in keys))
    for s, b in enumerate(seeds):
        torch.testing.assert_close(batched[s], objective_loss(obj, b, b["lp"]).loss, atol=1e-12, rtol=0)


def test_half_precision_is_computed_in_float32():
    b = batch(14)
    obj = cp.Objective.preset("dapo")
    adv = obj.advantages(b["rewards"], 4)
    lp16 = b["lp"].to(torch.bfloat16).requires_grad_(True)
    out = obj.loss(lp16, b["old"].to(torch.bfloat16), adv.to(torch.bfloat16), b["mask"])
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert lp16.grad.dtype == torch.bfloat16 and torch.all(torch.isfinite(lp16.grad))


def test_huge_log_ratios_do_not_overflow():
    b = batch(15)
    lp = b["old"] + 500.0
    for name in sorted(cp.PRESETS):
        out = objective_loss(cp.Objective.preset(name), b, lp.clone().requires_grad_(True))
        assert torch.isfinite(out.loss), name


def test_fully_masked_rows_and_an_empty_batch_contribute_zero():
    b = batch(16)
    mask = b["mask"].clone()
    mask[3] = 0
    for name in sorted(cp.PRESETS):
        obj = cp.Objective.preset(name)
        out = objective_loss(obj, {**b, "mask": mask}, b["lp"])
        assert torch.isfinite(out.loss) and torch.all(out.weights[3] == 0), name
        empty = objective_loss(obj, {**b, "mask": torch.zeros_like(mask)}, b["lp"])
        assert empty.loss == 0, name


# --- bad input ---------------------------------------------------------------------------------------------
def call(obj=None, **overrides):
    b = batch(17)
    obj = obj or cp.Objective.preset("grpo_r1")
    args = dict(logprobs=b["lp"], old_logprobs=b["old"], advantages=obj.advantages(b["rewards"], 4),
                mask=b["mask"], ref_logprobs=b["ref"])
    args.update(overrides)
    return obj.loss(**args)


@pytest.mark.parametrize(("overrides", "error", "match"), [
    (dict(old_logprobs=torch.zeros(12, 5, dtype=torch.float64)), ValueError, "old_logprobs"),
    (dict(mask=torch.ones(12, 5)), ValueError, "mask"),
    (dict(advantages=torch.zeros(11, dtype=torch.float64)), ValueError, "advantages"),
    (dict(logprobs=torch.zeros(12, dtype=torch.float64)), ValueError, "logprobs"),
    (dict(mask=torch.full((12, 6), 0.5)), ValueError, "0 and 1"),
    (dict(logprobs=torch.full((12, 6), float("nan"), dtype=torch.float64)), ValueError, "logprobs"),
    (dict(old_logprobs=torch.full((12, 6), float("-inf"), dtype=torch.float64)), ValueError, "old_logprobs"),
    (dict(advantages=torch.full((12,), float("inf"), dtype=torch.float64)), ValueError, "advantages"),
    (dict(ref_logprobs=None), ValueError, "ref_logprobs"),
    (dict(ref_logprobs=torch.full((12, 6), float("nan"), dtype=torch.float64)), ValueError, "ref_logprobs"),
    (dict(logprobs=torch.zeros(12, 6, dtype=torch.long)), TypeError, "logprobs"),
    (dict(advantages=torch.zeros(12, dtype=torch.long)), TypeError, "advantages"),
    (dict(logprobs=[[0.0]]), TypeError, "logprobs"),
])
def test_bad_loss_inputs_get_a_clear_error(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_zero_probability_tokens_are_allowed_and_overflow_is_named():
    """log π = −inf (probability 0) is s = 0 for a ratio surrogate: a finite loss, no error. A loss that
    overflows although its inputs are finite is a ValueError that says so."""
    b = batch(17)
    lp = b["lp"].clone()
    lp[0, 0] = float("-inf")
    assert torch.isfinite(call(cp.Objective.preset("dapo"), logprobs=lp).loss)
    with pytest.raises(ValueError, match="logprobs"):
        call(cp.Objective.preset("gpg"), logprobs=lp)  # A log π is -inf there: named
    huge = torch.full((12,), 3e38, dtype=torch.float32)
    with pytest.raises(ValueError, match="overflow"):
        call(cp.Objective.preset("dr_grpo", beta=0.0), logprobs=b["lp"].float(),
             old_logprobs=b["old"].float(), mask=b["mask"].float(), advantages=huge)


def test_bool_and_integer_masks_are_accepted():
    b = batch(17)  # call()'s batch
    reference = call().loss
    torch.testing.assert_close(call(mask=b["mask"].bool()).loss, reference)
    torch.testing.assert_close(call(mask=b["mask"].long()).loss, reference)


def test_gtpo_needs_tokens_entropies_and_group_size():
    obj = cp.Objective.preset("gtpo")
    with pytest.raises(ValueError, match="tokens"):
        call(obj)
    b = batch(19)
    with pytest.raises(ValueError, match="group_size"):
        call(obj, tokens=b["tokens"], entropies=b["entropies"])
    with pytest.raises(ValueError, match="entropies"):
        call(obj, tokens=b["tokens"], group_size=4)


@pytest.mark.parametrize(("rewards", "group_size", "error", "match"), [
    (torch.zeros(8), 3, ValueError, "divide"),
    (torch.zeros(8), 1, ValueError, "group_size must be >= 2"),
    (torch.zeros(8), 0, ValueError, "group_size"),
    (torch.zeros(8), 2.0, TypeError, "group_size"),
    (torch.tensor([0.0, float("nan"), 1.0, 1.0]), 2, ValueError, "rewards"),
    (torch.zeros(4, 2), 2, ValueError, "1-D"),
    (torch.zeros(8, dtype=torch.long), 2, TypeError, "rewards"),
])
def test_bad_rewards_get_a_clear_error(rewards, group_size, error, match):
    with pytest.raises(error, match=match):
        cp.Objective.preset("grpo_r1").advantages(rewards, group_size)


def test_ppo_needs_no_groups():
    adv = cp.Objective.preset("ppo").advantages(torch.tensor([1.0, 0.0, 2.0]), 1)
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0]))


@pytest.mark.parametrize(("fields", "error", "match"), [
    (dict(beta=-0.1, kl="k3"), ValueError, "beta"),
    (dict(beta=0.1), ValueError, "kl"),
    (dict(clip_low=1.0), ValueError, "clip_low"),
    (dict(clip_low=-0.1), ValueError, "clip_low"),
    (dict(clip_high=-0.2), ValueError, "clip_high"),
    (dict(clip_high=float("nan")), ValueError, "clip_high"),
    (dict(dual_clip=0.5), ValueError, "dual_clip"),
    (dict(surrogate="ppo2"), ValueError, "surrogate"),
    (dict(aggregation="mean"), ValueError, "aggregation"),
    (dict(kl="k4", beta=0.1), ValueError, "kl"),
    (dict(std_correction=2), ValueError, "std_correction"),
    (dict(clip_low="0.2"), TypeError, "clip_low"),
    (dict(surrogate="soft_gate"), ValueError, "sapo_temperatures"),
    (dict(aggregation="seq_mean"), ValueError, "seq_mean"),
    (dict(surrogate="log_prob", ratio_level="sequence"), ValueError, "ratio_level"),
])
def test_bad_fields_get_a_clear_error(fields, error, match):
    with pytest.raises(error, match=match):
        cp.Objective(**fields)


def test_unknown_presets_and_fields():
    with pytest.raises(ValueError, match=r"unknown preset 'grpo2'.*dapo"):
        cp.Objective.preset("grpo2")
    with pytest.raises(TypeError, match="epsilon"):
        cp.Objective.preset("dapo", epsilon=0.3)
    assert cp.Objective.preset("dapo", clip_high=0.3).clip_high == 0.3
    assert cp.Objective.preset("dr_grpo", beta=0.0).beta == 0.0  # kl stays, unused


# --- the presets and Table 1 -------------------------------------------------------------------------------
BIB = Path(__file__).resolve().parents[1] / "book" / "references.bib"


def test_every_preset_cites_a_source_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,]+),", BIB.read_text()))
    for name, method in cp.PRESETS.items():
        assert method.source in keys, name
        assert method.objective.source == method.source and method.objective.name == name
        assert method.notes, name
        assert f"``{name}``: {method.label} [{method.source}]" in methods.__doc__  # the API page lists it
    assert tuple(cp.PRESETS)[:10] == methods.TABLE1


def test_table1_is_rendered_from_the_fields():
    table = cp.methods_table()
    for method in methods.TABLE1:
        assert cp.PRESETS[method].label in table
    rows = {r["method"]: r for r in methods.table_rows("all")}
    assert rows["GRPO (R1)"]["α_{i,t}"] == "1/(G·|o_i|·σ(r))"
    assert rows["DAPO"]["α_{i,t}"] == "1/(σ(r)·Σ|o_j|)"
    assert rows["Dr GRPO"]["α_{i,t}"] == "1/G"
    assert rows["GCPO"]["α_{i,t}"] == "1/(σ(r)·G)"
    assert rows["GRPO (v3.2)"]["α_{i,t}"] == "M_{i,t}/(G·|o_i|)"
    assert rows["GRPO (v3.2)"]["R(θ)"].startswith("I·D_KL")
    assert rows["GPG"]["s_{i,t}"] == "log π_θ" and rows["CISPO"]["s_{i,t}"] == "sg[clip(I)]·log π_θ"
    assert rows["DAPO"]["R(θ)"] == "×"
    changed = methods.alpha_text(cp.Objective.preset("dapo", aggregation="seq_mean_token_sum"))
    assert changed == "1/(σ(r)·G)"
    assert "<table" in cp.methods_table("all", fmt="html")
    with pytest.raises(ValueError, match="which"):
        cp.methods_table("some")
    with pytest.raises(ValueError, match="fmt"):
        cp.methods_table(fmt="latex")


def test_objective_is_immutable_and_hashable():
    obj = cp.Objective.preset("grpo_r1")
    with pytest.raises(AttributeError):
        obj.beta = 1.0  # type: ignore[misc]
    assert obj == cp.Objective.preset("grpo_r1") and hash(obj) == hash(cp.Objective.preset("grpo_r1"))
    assert math.isclose(obj.with_(beta=0.1).beta, 0.1)


# --- issue 13: GTPO's conflict-token search never reads padding (perf) ---------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_conflict_tokens_match_the_reference_and_ignore_adversarial_padding(seed):
    """Padding (mask 0) copies, position by position, a token that an opposite-sign completion of the group
    has there, from the start and from the end: counted as tokens, it would extend the conflict runs."""
    from eq1_reference import gtpo_lambda

    b = batch(seed, n_groups=4, group_size=4, horizon=7)
    tokens, mask = b["tokens"].clone(), b["mask"]
    adv = cp.Objective.preset("gtpo").advantages(b["rewards"], 4)
    lengths = mask.sum(-1).long()
    for i in range(tokens.shape[0]):
        group = range(i // 4 * 4, i // 4 * 4 + 4)
        opposite = [j for j in group if adv[j] * adv[i] < 0]
        for t in range(int(lengths[i]), tokens.shape[1]):
            if opposite:
                j = opposite[t % len(opposite)]
                tokens[i, t] = tokens[j, t] if t < lengths[j] else tokens[j, lengths[j] - 1]
    conflict = conflict_tokens(tokens, adv, mask, 4)
    lam = gtpo_lambda(tokens.tolist(), adv.tolist(), mask.tolist(), 4)
    expected = torch.tensor([[value != 1.0 for value in row] for row in lam])
    assert torch.equal(conflict, expected)
    assert not conflict[mask == 0].any()
    # the same search with EOS-like constant padding finds the same conflicts
    plain = b["tokens"].masked_fill(mask == 0, 9)
    assert torch.equal(conflict_tokens(plain, adv, mask, 4), conflict_tokens(tokens, adv, mask, 4))


def test_conflict_tokens_by_hand():
    """Two groups of two: a shared prefix (from the start), a shared suffix (from the end, with different
    lengths), and a tie (A = 0 has no sign: no conflict)."""
    tokens = torch.tensor([[1, 2, 3, 0], [1, 2, 4, 3],    # group 0: prefix 1 2, suffix ... 3
                           [5, 6, 7, 8], [5, 6, 7, 8]])   # group 1: identical rows
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, -1.0, 0.0, 1.0])
    conflict = conflict_tokens(tokens, adv, mask, 2)
    expected = torch.tensor([[True, True, True, False], [True, True, False, True],
                             [False, False, False, False], [False, False, False, False]])
    assert torch.equal(conflict, expected)


# --- issue 13: batch_dims, a seed axis without vmap (perf) ----------------------------------------------
@pytest.mark.parametrize("name", sorted(cp.PRESETS))
def test_batch_dims_give_each_seed_its_own_loss_and_diagnostics(name):
    """batch_dims=1 on (S, N, T): the same numbers as vmap over the seed axis, bit for bit, and as a call per
    seed; DAPO's token count, REINFORCE++'s whitening, GPG's alpha and GTPO's groups stay within a seed."""
    seeds = [batch(s) for s in (21, 22, 23)]
    keys = ("lp", "old", "ref", "mask", "rewards", "tokens", "entropies")
    stacked = {k: torch.stack([b[k] for b in seeds]) for k in keys}
    obj = cp.Objective.preset(name)
    adv = obj.advantages(stacked["rewards"], 4, stacked["mask"], batch_dims=1)
    lp = stacked["lp"].clone().requires_grad_(True)
    out = obj.loss(lp, stacked["old"], adv, stacked["mask"], stacked["ref"], tokens=stacked["tokens"],
                   entropies=stacked["entropies"], group_size=4, batch_dims=1)
    out.loss.sum().backward()

    def one(lp_, old, ref, mask, rewards, tokens, entropies):
        a = obj.advantages(rewards, 4, mask, validate=False)
        o = obj.loss(lp_, old, a, mask, ref, tokens=tokens, entropies=entropies, group_size=4, validate=False)
        return a, o.scalars(), o.weights

    vmapped_adv, vmapped, vmapped_weights = torch.func.vmap(one)(*(stacked[k] for k in keys))
    assert torch.equal(adv, vmapped_adv) and torch.equal(out.weights, vmapped_weights)
    for key, value in out.scalars().items():
        assert value.shape == (3,) and torch.equal(value.detach(), vmapped[key].detach()), key
    for s, b in enumerate(seeds):
        x = b["lp"].clone().requires_grad_(True)
        alone = objective_loss(obj, b, x)
        alone.loss.backward()
        torch.testing.assert_close(adv[s], obj.advantages(b["rewards"], 4, b["mask"]), atol=1e-12, rtol=0)
        for key, value in alone.scalars().items():
            torch.testing.assert_close(out.scalars()[key][s].detach(), value.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(lp.grad[s], x.grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(out.alpha[s], alone.alpha, atol=1e-15, rtol=0)


def test_batch_dims_shapes_are_checked():
    obj = cp.Objective.preset("grpo_r1")
    b = batch(24)
    two = {k: torch.stack([b[k], b[k]]) for k in ("lp", "old", "ref", "mask", "rewards")}
    with pytest.raises(ValueError, match="1-D"):
        obj.advantages(two["rewards"], 4)  # a seed axis must be asked for
    with pytest.raises(ValueError, match="batch dim"):
        obj.advantages(b["rewards"], 4, batch_dims=1)
    with pytest.raises(ValueError, match="mask"):
        obj.advantages(two["rewards"], 4, two["mask"][0], batch_dims=1)
    adv = obj.advantages(two["rewards"], 4, batch_dims=1)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        obj.loss(two["lp"], two["old"], adv, two["mask"], two["ref"])
    with pytest.raises(ValueError, match="batch dim"):
        obj.loss(b["lp"], b["old"], adv[0], b["mask"], b["ref"], batch_dims=1)
    with pytest.raises(ValueError, match="advantages"):
        obj.loss(two["lp"], two["old"], adv[:, :6], two["mask"], two["ref"], batch_dims=1)
    bad = two["lp"].clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="logprobs"):
        obj.loss(bad, two["old"], adv, two["mask"], two["ref"], batch_dims=1)
    out = obj.loss(two["lp"], two["old"], adv, two["mask"], two["ref"], batch_dims=1)
    assert out.loss.shape == (2,) and torch.equal(out.loss[0], out.loss[1])


# --- issue 13: survivors of the objective mutation sample (perf) -----------------------------------------
def test_cispo_counts_the_tokens_whose_is_weight_is_clipped():
    b = batch(31)
    lp = b["lp"].clone()
    lp[1] = b["old"][1] + 2.0  # s = e^2 > 5: CISPO's IS weight is clipped on every token of row 1
    obj = cp.Objective.preset("cispo", is_weight_low=0.5)
    out = objective_loss(obj, b, lp)
    s = (lp - b["old"]).exp()
    tokens = b["mask"].sum()
    assert out.clip_fraction_high.item() == pytest.approx(((s > 5.0) * b["mask"]).sum() / tokens)
    assert out.clip_fraction_low.item() == pytest.approx(((s < 0.5) * b["mask"]).sum() / tokens)
    assert out.clip_fraction_high > 0 and out.clip_fraction_low > 0


def test_verl_low_var_kl_clamps_the_log_ratio_at_20_and_the_value_at_10():
    from companion.objective import kl_estimate

    lp = torch.tensor([[-30.0, -20.5, 0.0, 20.5]], dtype=torch.float64)
    ref = torch.zeros_like(lp)
    value = kl_estimate("k3", lp, ref, clamped=True)
    x = (ref - lp).clamp(-20.0, 20.0)
    torch.testing.assert_close(value, (torch.expm1(x) - x).clamp(-10.0, 10.0), rtol=0, atol=0)
    assert value[0].tolist() == [10.0, 10.0, 0.0, 10.0]  # verl's bounds bind at both ends
    assert kl_estimate("k3", lp, ref)[0, 3].item() == pytest.approx(math.expm1(-20.5) + 20.5)  # unclamped


def test_a_constant_length_sets_the_constant_weights():
    b = batch(32)
    obj = cp.Objective(aggregation="constant", constant_length=10.0)
    out = objective_loss(obj, b, b["lp"])
    torch.testing.assert_close(out.alpha, b["mask"] / (12 * 10.0), rtol=0, atol=0)
    no_length = objective_loss(cp.Objective(aggregation="constant"), b, b["lp"])
    torch.testing.assert_close(no_length.alpha, b["mask"] / (12 * b["mask"].shape[1]), rtol=0, atol=0)


@pytest.mark.parametrize(("fields", "match"), [
    (dict(is_weight_high=0.0), "is_weight_high"), (dict(is_weight_high=-1.0), "is_weight_high"),
    (dict(adv_threshold=-0.5), "adv_threshold"), (dict(is_weight_low=-0.1), "is_weight_low"),
    (dict(token_mask="trust_region", clip_low=None), "trust_region"),
    (dict(token_mask="trust_region", clip_high=None), "trust_region"),
])
def test_more_bad_fields_are_named(fields, match):
    with pytest.raises(ValueError, match=rf"\b{match}\b"):
        cp.Objective(**fields)
    assert cp.Objective(token_mask="trust_region").token_mask == "trust_region"


def test_old_logprobs_and_advantages_never_carry_gradient():
    b = batch(33)
    obj = cp.Objective.preset("grpo_r1")
    old = b["old"].clone().requires_grad_(True)
    adv = obj.advantages(b["rewards"], 4).requires_grad_(True)
    lp = b["lp"].clone().requires_grad_(True)
    out = obj.loss(lp, old, adv, b["mask"], ref_logprobs=b["ref"])
    grads = torch.autograd.grad(out.loss, (lp, old, adv), allow_unused=True)
    assert grads[0] is not None and grads[1] is None and grads[2] is None


def test_a_non_float_old_logprobs_is_named():
    b = batch(34)
    with pytest.raises(TypeError, match="old_logprobs"):
        cp.Objective.preset("grpo").loss(b["lp"], b["old"].long(), torch.zeros(12, dtype=torch.float64),
                                         b["mask"])


def test_trl_delta_cap_flags_a_negative_advantage_only_above_both_bounds():
    """A < 0: min(min(s, δ) A, clip(s) A) has zero gradient only where s > max(δ, 1 + ε); at s = max exactly
    the clip still passes the gradient (the boundary belongs to the unclipped side)."""
    obj = cp.Objective.preset("grpo", ratio_cap=1.5)
    mask = torch.ones(1, 3, dtype=torch.float64)
    lp = torch.log(torch.tensor([[1.5, 1.5 + 1e-9, 1.0]], dtype=torch.float64))
    out = obj.loss(lp, torch.zeros_like(lp), torch.tensor([-1.0], dtype=torch.float64), mask)
    assert out.clip_fraction_high.item() == pytest.approx(1 / 3)


def test_verl_plus_kl_types_take_k2_s_gradient_through_the_objective():
    b = batch(35)
    plus = cp.Objective(kl="k1", beta=0.1, kl_straight_through=True)
    k2 = cp.Objective(kl="k2", beta=0.1)
    k1 = cp.Objective(kl="k1", beta=0.1)
    grads = {}
    for name, obj in (("plus", plus), ("k2", k2), ("k1", k1)):
        lp = b["lp"].clone().requires_grad_(True)
        out = objective_loss(obj, b, lp)
        (grads[name],) = torch.autograd.grad(out.regulariser, lp)
        grads[name + "_value"] = out.regulariser.detach()
    torch.testing.assert_close(grads["plus"], grads["k2"], rtol=0, atol=1e-15)
    torch.testing.assert_close(grads["plus_value"], grads["k1_value"], rtol=0, atol=1e-15)
    assert not torch.allclose(grads["k1"], grads["k2"])


def test_cispo_trust_region_mask_drops_the_tokens_the_clip_would_zero():
    b = batch(36, spread=0.5)
    obj = cp.Objective(token_mask="trust_region", surrogate="is_weighted_log_prob", aggregation="token_mean",
                       is_weight_high=5.0)
    adv = obj.advantages(b["rewards"], 4)
    out = objective_loss(obj, b, b["lp"], adv)
    s = (b["lp"] - b["old"]).exp()
    a = adv.unsqueeze(1)
    dropped = ((a > 0) & (s > 1.2)) | ((a < 0) & (s < 0.8))
    assert dropped[b["mask"] > 0].any() and not dropped[b["mask"] > 0].all()
    assert torch.all(out.alpha[dropped] == 0) and torch.all(out.alpha[~dropped & (b["mask"] > 0)] > 0)


@pytest.mark.parametrize(("fields", "match"), [
    (dict(gtpo=True, gtpo_entropy_threshold=-0.1), "gtpo_entropy_threshold"),
    (dict(gpg_alpha="sometimes"), "gpg_alpha"),
])
def test_gtpo_and_gpg_fields_are_checked(fields, match):
    with pytest.raises(ValueError, match=match):
        cp.Objective(**fields)


def test_gpg_nonzero_reward_alpha_counts_per_batch_and_a_single_nonzero_reward():
    obj = cp.Objective(gpg_alpha="nonzero_reward", std_scale=None)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    batched = obj.advantages(rewards, 2, batch_dims=1)
    for s in range(2):
        torch.testing.assert_close(batched[s], obj.advantages(rewards[s], 2), rtol=0, atol=0)
    centred = rewards[0].view(2, 2) - rewards[0].view(2, 2).mean(1, keepdim=True)
    torch.testing.assert_close(batched[0], centred.reshape(4) * 4.0, rtol=0, atol=0)  # N / #(r != 0) = 4


@pytest.mark.parametrize(("fields", "message"), [
    (dict(is_weight_low=-0.1), "is_weight_low must be >= 0.0"),
    (dict(token_mask="bogus"), "token_mask='bogus' is not one of"),
    (dict(surrogate="geometric_mean", aggregation="seq_mean", clip_low=None), "geometric_mean clips"),
    (dict(surrogate="geometric_mean", aggregation="seq_mean", clip_high=None), "geometric_mean clips"),
])
def test_field_errors_start_with_the_field(fields, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        cp.Objective(**fields)


def test_loss_input_errors_name_the_input_first():
    b = batch(37)
    obj = cp.Objective.preset("grpo")
    adv = obj.advantages(b["rewards"], 4)
    with pytest.raises(TypeError, match=r"^advantages must be a floating-point"):
        obj.loss(b["lp"], b["old"], adv.long(), b["mask"])
    with pytest.raises(ValueError, match=r"^advantages has a non-finite value"):
        obj.loss(b["lp"], b["old"], torch.full_like(adv, float("inf")), b["mask"])
    obj.check_inputs(b["lp"], b["old"], adv, b["mask"])  # the public check passes what loss accepts
    with pytest.raises(ValueError, match=r"^advantages must be"):
        obj.check_inputs(b["lp"], b["old"], adv[:5], b["mask"])


def test_gtpo_accepts_groups_of_two():
    b = batch(38, n_groups=6, group_size=2)
    obj = cp.Objective.preset("gtpo", gtpo_entropy_threshold=None)
    out = obj.loss(b["lp"], b["old"], obj.advantages(b["rewards"], 2), b["mask"], tokens=b["tokens"],
                   entropies=b["entropies"], group_size=2)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="group_size"):
        obj.loss(b["lp"], b["old"], obj.advantages(b["rewards"], 2), b["mask"], tokens=b["tokens"],
                 entropies=b["entropies"], group_size=1)


def test_gmpo_never_counts_a_zero_advantage_as_clipped():
    obj = cp.Objective.preset("gmpo")
    lp = torch.full((2, 3), 1.0, dtype=torch.float64)  # log-ratio 1 > clip_high on every token
    out = obj.loss(lp, torch.zeros_like(lp), torch.tensor([0.0, 1.0], dtype=torch.float64),
                   torch.ones_like(lp))
    assert out.clip_fraction_high.item() == pytest.approx(0.5)  # the positive row only


def test_reinforce_pp_whitens_a_single_reward_to_zero():
    adv = cp.Objective.preset("reinforce_pp").advantages(torch.tensor([3.0]), 1, torch.ones(1, 4))
    assert adv.tolist() == [0.0]
    adv = cp.Objective.preset("reinforce_pp").advantages(torch.tensor([3.0]), 1, torch.tensor([[1.0, 0.0]]))
    assert adv.tolist() == [0.0]  # one token: the centre is the reward itself


def test_loss_output_repr_lists_the_scalars():
    b = batch(39)
    out = objective_loss(cp.Objective.preset("grpo"), b, b["lp"])
    text = repr(out)
    assert text.startswith("LossOutput(loss=") and ", policy_loss=" in text and text.endswith(")")


ZERO_ONE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8)


@pytest.mark.parametrize("dtype", ZERO_ONE_DTYPES)
def test_a_zero_one_mask_of_any_dtype_is_accepted(dtype):
    mask = (torch.arange(24).reshape(4, 6) % 3 == 0).to(dtype)
    assert objective_module._is_zero_one(mask)
    assert objective_module._is_zero_one(torch.zeros(4, 6, dtype=dtype))
    assert objective_module._is_zero_one(torch.ones(4, 6, dtype=dtype))


BAD_MASK_VALUES = (0.5, 2.0, -1.0, float("nan"), float("inf"), float("-inf"), 1 + 2**-23, 1 - 2**-24,
                   1e-30, 2**-149, -(2**-149), 3e38)


@pytest.mark.parametrize("value", BAD_MASK_VALUES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_one_value_other_than_0_and_1_anywhere_in_the_mask_is_refused(value, dtype):
    for position in (0, 11, 23):
        mask = (torch.arange(24) % 2).to(dtype)
        mask[position] = value
        assert not objective_module._is_zero_one(mask.reshape(4, 6)), (value, position)


@pytest.mark.parametrize("value", (2, 255, -1, 2**40))
def test_integer_masks_other_than_0_and_1_are_refused(value):
    mask = torch.zeros(4, 6, dtype=torch.int64)
    mask[2, 3] = value
    assert not objective_module._is_zero_one(mask)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("ratio_cap", (None, 1.5))
def test_the_clip_min_equals_torch_minimum_in_value_and_gradient_bit_for_bit(dtype, ratio_cap):
    """PPO's min(s A, clip(s) A) through `_smaller` (a cheaper backward): inside the clip range the two
    terms tie and minimum splits the gradient in halves; the sum must be the same bits."""
    gen = torch.Generator().manual_seed(0)
    log_s = torch.randn(64, 33, generator=gen, dtype=dtype) * 0.4
    adv = torch.randn(64, 1, generator=gen, dtype=dtype)
    adv[::7] = 0.0
    upstream = torch.randn(64, 33, generator=gen, dtype=dtype)
    results = []
    for smaller in (torch.minimum, objective_module._smaller):
        x = log_s.clone().requires_grad_(True)
        s = x.exp()
        unclipped = s if ratio_cap is None else s.clamp(max=ratio_cap)
        f = smaller(unclipped * adv, s.clamp(0.8, 1.28) * adv)
        (f * upstream).sum().backward()
        results.append((f.detach(), x.grad))
    (f_min, g_min), (f_ours, g_ours) = results
    s = log_s.exp()
    inside = (s >= 0.8) & (s <= 1.28)
    assert inside.any() and (~inside & (adv != 0)).any() and (g_min != 0).any()
    assert torch.equal(f_min, f_ours)
    assert torch.equal(g_min, g_ours)


def test_sapo_weights_with_temperatures_float32_cannot_hold_are_the_gradient_in_float64():
    """SAPO's τ must be taken in the computation's dtype: 1.1 and 0.7 are not float32 numbers."""
    b = batch(3, spread=0.4)
    obj = cp.Objective.preset("grpo_r1", beta=0.0, surrogate="soft_gate", sapo_temperatures=(1.1, 0.7),
                              clip_low=None, clip_high=None)
    adv = obj.advantages(b["rewards"], 4, b["mask"])
    out = objective_loss(obj, b, b["lp"].clone().requires_grad_(True), adv)
    (grad,) = torch.autograd.grad(out.loss, out._ctx.logprobs)
    torch.testing.assert_close(out.weights * adv.unsqueeze(1), -grad, atol=1e-13, rtol=0)


def test_half_precision_inputs_give_the_loss_of_their_float32_values_kl_included():
    b = batch(14)
    obj = cp.Objective.preset("grpo_r1")  # β = 0.04: the reference log-probabilities count
    adv = obj.advantages(b["rewards"], 4)
    half = {k: b[k].to(torch.bfloat16) for k in ("lp", "old", "ref")}
    loss16 = obj.loss(half["lp"], half["old"], adv.to(torch.bfloat16), b["mask"], half["ref"]).loss
    loss32 = obj.loss(*(half[k].float() for k in ("lp", "old")), adv.to(torch.bfloat16).float(),
                      b["mask"], half["ref"].float()).loss
    assert loss16.dtype == torch.float32
    assert torch.equal(loss16, loss32)


def test_the_off_policy_mask_drops_only_negative_advantages():
    """DeepSeek-V3.2's M: a completion far below π_old is dropped when A_i < 0, kept when A_i ≥ 0."""
    b = batch(3)
    obj = cp.Objective.preset("grpo_v32", beta=0.0)
    far = b["old"] - 0.9  # mean log(π_old/π_θ) = 0.9 > δ = 0.5 on every row
    for sign, kept in ((-1.0, False), (0.0, True), (1.0, True)):
        adv = torch.full((12,), sign, dtype=torch.float64)
        alpha = obj.loss(far, b["old"], adv, b["mask"]).alpha
        assert bool((alpha[b["mask"] > 0] > 0).all()) is kept, sign
        assert bool((alpha == 0).all()) is not kept, sign


def test_row_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    per_row = objective_module.row_weights("seq_mean_token_mean", mask)
    assert per_row.shape == (3, 1)
    torch.testing.assert_close(per_row, torch.tensor([[1 / 6], [1 / 3], [1 / 3]]))  # 1/(N·max(|o_i|, 1))
    one_token = torch.zeros(2, 4)
    one_token[1, 2] = 1.0
    assert objective_module.row_weights("token_mean", one_token).item() == 1.0  # 1/Σ|o_j|
    no_token = torch.zeros(2, 4)
    assert objective_module.row_weights("token_mean", no_token).item() == 1.0  # 1/max(0, 1)


def test_sapo_takes_its_temperatures_exactly_in_float64():
    """TRL's SAPO with τ = (1.0, 1.05) in float64: (4/τ) σ(τ(s − 1)) A, summed as GRPO sums, to 1e-15."""
    b = batch(8, spread=0.4)
    obj = cp.Objective.preset("sapo", beta=0.0)
    adv = obj.advantages(b["rewards"], 4, b["mask"])
    loss = obj.loss(b["lp"], b["old"], adv, b["mask"]).loss
    tau = torch.where(adv > 0, *(torch.tensor(t, dtype=torch.float64) for t in (1.0, 1.05)))
    s = (b["lp"] - b["old"]).exp()
    per_token = -(4.0 / tau[:, None]) * torch.sigmoid(tau[:, None] * (s - 1.0)) * adv[:, None]
    expected = ((per_token * b["mask"]).sum(-1) / b["mask"].sum(-1).clamp(min=1)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-15, rtol=0)
