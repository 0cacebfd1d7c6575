"""companion.integrations.verl: a cp.Objective as verl 0.9.1's policy loss.

Always: against tests/conformance's plain re-implementation of verl (verl_reference.py). When verl is
importable (it is not a dependency: install it in its own environment, e.g. a venv with torch and
`pip install --no-deps verl==0.9.1` plus what its policy-loss module imports), also against verl's own
registered functions, with verl's own ActorConfig, including its multi-rank normalisation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import companion as cp
from companion.integrations import verl as bridge

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
from cases import VERL_LOSS_CASES, assert_value_and_grad_match, case_id, random_batch, signed_advantages
from verl_reference import verl_policy_loss

POLICY_FIELDS = ("policy_loss", "loss_agg_mode", "clip_ratio", "clip_ratio_low", "clip_ratio_high",
                 "clip_ratio_c", "tau_pos", "tau_neg", "loss_scale_factor")
HAS_VERL = importlib.util.find_spec("verl") is not None


def _ours(cfg: dict, aggregation: str = "loss_agg_mode", config=None):
    fn = bridge.policy_loss_fn(cp.Objective.from_verl(**cfg), aggregation=aggregation)
    mode = cfg.get("loss_agg_mode", "token-mean")
    if config is None:
        fields = {"global_batch_info": {}, "loss_scale_factor": cfg.get("loss_scale_factor")}
        config = type("Cfg", (), fields)()
    return lambda old, lp, adv, mask: fn(old, lp, adv, mask, loss_agg_mode=mode, config=config)


def _token_advantages(batch, seed):
    return signed_advantages(batch, seed).unsqueeze(1) * batch.mask  # verl hands the actor scalar * mask


@pytest.mark.parametrize("cfg", VERL_LOSS_CASES, ids=[case_id(c) for c in VERL_LOSS_CASES])
@pytest.mark.parametrize("aggregation", ["loss_agg_mode", "objective"])
def test_policy_loss_equals_the_verl_reference(cfg, aggregation):
    batch = random_batch(11)
    adv = _token_advantages(batch, 11)
    ours = _ours(cfg, aggregation)

    def reference(logprobs):
        return verl_policy_loss(logprobs, batch.old_logprobs, adv, batch.mask, **cfg)

    assert_value_and_grad_match(lambda lp: ours(batch.old_logprobs, lp, adv, batch.mask)[0], reference,
                                batch.logprobs)


def test_loss_agg_mode_decides_alpha_unless_told_otherwise():
    batch = random_batch(12)
    adv = _token_advantages(batch, 12)
    dr_grpo = cp.Objective.preset("dr_grpo", beta=0.0)
    config = type("Cfg", (), {"global_batch_info": {}})()
    by_mode = bridge.policy_loss_fn(dr_grpo)
    own = bridge.policy_loss_fn(dr_grpo, aggregation="objective")
    args = (batch.old_logprobs, batch.logprobs, adv, batch.mask)
    token_mean = by_mode(*args, loss_agg_mode="token-mean", config=config)[0]
    seq_sum = own(*args, loss_agg_mode="token-mean", config=config)[0]
    expected = verl_policy_loss(batch.logprobs, batch.old_logprobs, adv, batch.mask,
                                loss_agg_mode="seq-mean-token-sum", clip_ratio_c=1e9)
    assert torch.allclose(seq_sum, expected, atol=1e-12)
    assert not torch.allclose(token_mean, seq_sum)


def test_bad_objectives_and_modes_are_named():
    with pytest.raises(ValueError, match="beta"):
        bridge.policy_loss_fn(cp.Objective.preset("grpo_r1"))
    with pytest.raises(ValueError, match="gtpo"):
        bridge.policy_loss_fn(cp.Objective.preset("gtpo", entropy_coef=0.0))
    with pytest.raises(ValueError, match="aggregation"):
        bridge.policy_loss_fn(cp.Objective.preset("dapo"), aggregation="verl")
    fn = bridge.policy_loss_fn(cp.Objective.preset("dapo"))
    batch = random_batch(13)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        fn(batch.old_logprobs, batch.logprobs, batch.old_logprobs, batch.mask, loss_agg_mode="mean")
    with pytest.raises(ValueError, match="rollout_is_weights"):
        fn(batch.old_logprobs, batch.logprobs, batch.old_logprobs, batch.mask,
           rollout_is_weights=torch.ones_like(batch.mask))


@pytest.mark.skipif(HAS_VERL, reason="verl is installed here")
def test_register_without_verl_says_what_to_install():
    with pytest.raises(ModuleNotFoundError, match=r"verl==0\.9\.1"):
        bridge.register(cp.Objective.preset("dapo"))


# --- against verl itself --------------------------------------------------------------------------------
def _verl_config(cfg: dict, info: dict):
    from verl.workers.config import FSDPActorConfig
    from verl.workers.config.actor import PolicyLossConfig

    fields = {k: v for k, v in cfg.items() if k in POLICY_FIELDS and k != "policy_loss"}
    loss = PolicyLossConfig(loss_mode=cfg.get("policy_loss", "vanilla"))
    config = FSDPActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=1,
                             ppo_mini_batch_size=4, policy_loss=loss, **fields)
    config.global_batch_info.update(info, loss_scale_factor=cfg.get("loss_scale_factor"))
    return config


GLOBAL_INFOS = [{}, {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None},
                {"dp_size": 2, "batch_num_tokens": 97, "global_batch_size": 24}]


@pytest.mark.skipif(not HAS_VERL, reason="verl is not installed (see the module docstring)")
@pytest.mark.parametrize("info", GLOBAL_INFOS, ids=["no-info", "one-rank", "two-ranks"])
@pytest.mark.parametrize("cfg", VERL_LOSS_CASES, ids=[case_id(c) for c in VERL_LOSS_CASES])
def test_registered_loss_equals_verls_own(cfg, info):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    name = bridge.register(cp.Objective.from_verl(**cfg), name=f"companion_test_{case_id(cfg)}")
    batch = random_batch(14)
    adv = _token_advantages(batch, 14)
    mask = batch.mask.bool()  # verl's ppo_loss hands the policy loss a bool mask
    mode = cfg.get("loss_agg_mode", "token-mean")
    config = _verl_config(cfg, info)
    theirs = get_policy_loss_fn(cfg.get("policy_loss", "vanilla"))
    ours = get_policy_loss_fn(name)

    def run(fn):
        return lambda lp: fn(batch.old_logprobs, lp, adv, mask, loss_agg_mode=mode, config=config)[0]

    assert_value_and_grad_match(run(ours), run(theirs), batch.logprobs)
    args = (batch.old_logprobs, batch.logprobs, adv, mask)
    their_metrics = theirs(*args, loss_agg_mode=mode, config=config)[1]
    our_metrics = ours(*args, loss_agg_mode=mode, config=config)[1]
    if cfg.get("policy_loss", "vanilla") == "vanilla":
        for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
            assert our_metrics[key] == pytest.approx(their_metrics[key], abs=1e-6), key  # verl: float32
