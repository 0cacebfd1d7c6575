"""`cp.Objective.from_verl(...)` computes what verl 0.9.1's actor computes (SPEC.md), to 1e-6."""

import itertools

import pytest
import torch
from cases import TOL, assert_value_and_grad_match, random_batch, signed_advantages
from verl_reference import VERL_AGG_MODES, VERL_POLICY_LOSSES, verl_actor_loss, verl_advantages

import companion as cp

ACTOR_FIELDS = (
    "policy_loss",
    "loss_agg_mode",
    "clip_ratio",
    "clip_ratio_low",
    "clip_ratio_high",
    "clip_ratio_c",
    "tau_pos",
    "tau_neg",
    "use_kl_loss",
    "kl_loss_coef",
    "kl_loss_type",
    "loss_scale_factor",
    "adv_estimator",
    "norm_adv_by_std_in_grpo",
)


def _case_id(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "defaults"


def _loss_cases() -> list[dict]:
    cases = [
        dict(policy_loss=p, loss_agg_mode=m) for p, m in itertools.product(VERL_POLICY_LOSSES, VERL_AGG_MODES)
    ]
    cases += [
        {},  # every default: vanilla, token-mean, clip 0.2/0.2, dual clip 3.0, no KL
        dict(clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=1.6),
        dict(clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.3, loss_agg_mode="seq-mean-token-mean"),
        dict(clip_ratio=0.5),  # ignored by verl: clip_ratio_low/high default to 0.2, not None
        dict(policy_loss="cispo", clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.5),
        dict(
            policy_loss="gspo", clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg_mode="seq-mean-token-mean"
        ),
        dict(policy_loss="geo_mean", clip_ratio_low=0.4, clip_ratio_high=0.4),
        dict(policy_loss="sapo", tau_pos=2.0, tau_neg=3.0),
        dict(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=11),
        dict(policy_loss="gpg", loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=4096),
    ]
    return cases


LOSS_CASES = _loss_cases()

KL_CASES = [
    dict(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type=k, loss_agg_mode=m)
    for k in ("kl", "k1", "mse", "k2", "low_var_kl", "k3")
    for m in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
]
KL_CASES += [
    dict(use_kl_loss=True),  # verl's kl defaults: low_var_kl, coefficient 0.001
    dict(use_kl_loss=False, kl_loss_coef=0.5, kl_loss_type="k1"),  # coefficient without use_kl_loss: no KL
    dict(
        policy_loss="gspo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k2", loss_agg_mode="token-mean"
    ),
    dict(
        policy_loss="cispo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k1", loss_agg_mode="token-sum"
    ),
]
# The policy term of sapo and geo_mean ignores loss_agg_mode but verl aggregates their KL term with it.
KL_MIXED_AGG_CASES = [
    dict(
        policy_loss="sapo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k3", loss_agg_mode="token-mean"
    ),
    dict(
        policy_loss="geo_mean",
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="k1",
        loss_agg_mode="token-mean",
    ),
]
KL_EXTRA_TYPES = [
    dict(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type=k)
    for k in ("abs", "k1+", "k3+", "low_var_kl+", "abs+")
]


def _check_loss(cfg: dict, seed: int, tokenwise_advantages: bool = False) -> None:
    batch = random_batch(seed)
    adv = signed_advantages(batch, seed)
    given = (
        adv.unsqueeze(1) * batch.mask if tokenwise_advantages else adv
    )  # verl hands the actor scalar * mask
    objective = cp.Objective.from_verl(**cfg)
    ref_logprobs = batch.ref_logprobs if cfg.get("use_kl_loss") else None

    def ours(logprobs):
        return objective.loss(logprobs, batch.old_logprobs, given, batch.mask, ref_logprobs=ref_logprobs).loss

    def reference(logprobs):
        return verl_actor_loss(logprobs, batch.old_logprobs, adv, batch.mask, batch.ref_logprobs, **cfg)

    assert_value_and_grad_match(ours, reference, batch.logprobs)


@pytest.mark.parametrize("cfg", LOSS_CASES, ids=[_case_id(c) for c in LOSS_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_value_and_gradient_match_verl(cfg, seed):
    _check_loss(cfg, seed)


@pytest.mark.parametrize("cfg", KL_CASES, ids=[_case_id(c) for c in KL_CASES])
def test_kl_loss_value_and_gradient_match_verl(cfg):
    _check_loss(cfg, seed=2)


@pytest.mark.parametrize("cfg", KL_MIXED_AGG_CASES, ids=[_case_id(c) for c in KL_MIXED_AGG_CASES])
def test_kl_with_a_policy_loss_that_ignores_loss_agg_mode(cfg):
    _check_loss(cfg, seed=3)


@pytest.mark.parametrize("cfg", KL_EXTRA_TYPES, ids=[_case_id(c) for c in KL_EXTRA_TYPES])
def test_abs_and_straight_through_kl_types(cfg):
    _check_loss(cfg, seed=4)


@pytest.mark.parametrize("policy_loss", VERL_POLICY_LOSSES)
def test_token_level_advantages_as_verl_passes_them(policy_loss):
    _check_loss(
        dict(policy_loss=policy_loss, loss_agg_mode="seq-mean-token-sum"), seed=5, tokenwise_advantages=True
    )


@pytest.mark.parametrize(
    "cfg",
    [
        dict(adv_estimator="grpo"),
        dict(adv_estimator="grpo", norm_adv_by_std_in_grpo=False),
        dict(adv_estimator="rloo"),
        dict(adv_estimator="gpg"),
    ],
    ids=_case_id,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_outcome_advantages_match_verl(cfg, seed):
    batch = random_batch(seed)
    ours = cp.Objective.from_verl(**cfg).advantages(batch.rewards, group_size=batch.group_size)
    expected = verl_advantages(batch.rewards, batch.group_size, **cfg)
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)


def test_reinforce_pp_advantages_match_verl_for_equal_lengths():
    """verl whitens token-level returns; with equal lengths that is whitening the rewards over the batch."""
    batch = random_batch(6)
    full = torch.ones_like(batch.mask)
    ours = cp.Objective.from_verl(adv_estimator="reinforce_plus_plus").advantages(batch.rewards, group_size=4)
    expected = verl_advantages(batch.rewards, 4, adv_estimator="reinforce_plus_plus", mask=full)[:, 0]
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("policy_loss", "clip_cov", VERL_POLICY_LOSSES),
        ("policy_loss", "dppo_tv", VERL_POLICY_LOSSES),
        ("loss_agg_mode", "mean", VERL_AGG_MODES),
        ("kl_loss_type", "full", ("kl", "k1", "mse", "k2", "low_var_kl", "k3")),
        ("adv_estimator", "gae", ("grpo", "rloo", "gpg", "reinforce_plus_plus")),
    ],
)
def test_unsupported_values_are_rejected_with_the_valid_ones(field, value, valid):
    with pytest.raises(ValueError, match=field) as info:
        cp.Objective.from_verl(**{field: value})
    assert all(v in str(info.value) for v in valid)


@pytest.mark.parametrize("field", ["clip_ratio_lo", "entropy_coeff", "ppo_epochs"])
def test_unknown_fields_are_rejected_with_the_supported_ones(field):
    with pytest.raises(TypeError, match=field) as info:
        cp.Objective.from_verl(**{field: 1})
    assert all(f in str(info.value) for f in ACTOR_FIELDS)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(clip_ratio_c=1.0),
        dict(clip_ratio_low=-0.1),
        dict(clip_ratio_high=-0.1),
        dict(kl_loss_coef=-1.0, use_kl_loss=True),
        dict(loss_scale_factor=0),
        dict(tau_neg=0.0),
    ],
    ids=_case_id,
)
def test_out_of_range_values_are_rejected(cfg):
    field = next(iter(cfg))
    with pytest.raises(ValueError, match=field):
        cp.Objective.from_verl(**cfg)
