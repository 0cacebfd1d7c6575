"""companion.integrations.trl against TRL 1.16 itself: the loss of every loss_type (value and gradient, fp64,
1e-6) through TRL's own `_compute_loss`, and a real `GRPOTrainer.train()` whose logged diagnostics are
recomputed here from the batches it saw.

"fp64": the model, π_old, π_ref and the advantages are float64; TRL's fused LM head still returns float32
log-probs, and both losses then compute in float64 (last measured: value within 4.4e-16, gradient
identical, over the 38 cases)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

import trl_toy
from transformers import PrinterCallback

import companion as cp
from companion.integrations import trl as bridge
from companion.prefix import trie

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
from cases import TRL_LOSS_CASES, case_id
from trl_reference import trl_advantages

TOL = 1e-6
F64 = torch.float64


def make_trainer(tmp_path, model=None, cls=bridge.GRPOTrainer, callbacks=(), optimizer=None, **kwargs):
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("objective", "advantages")}
    model = trl_toy.model() if model is None else model
    with bridge.quiet():
        args = trl_toy.config(str(tmp_path / "out"), **overrides)
        trainer = cls(model=model, reward_funcs=trl_toy.format_reward, args=args,
                      train_dataset=trl_toy.dataset(), processing_class=trl_toy.tokenizer(),
                      callbacks=list(callbacks), optimizers=(optimizer, None), **kwargs)
    trainer.remove_callback(PrinterCallback)
    return trainer


# --- the loss, against TRL's own _compute_loss ------------------------------------------------------------
@pytest.fixture(scope="module")
def fp64_trainer(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("fp64"), model=trl_toy.model(dtype=F64))
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def configure(trainer, **case):
    """Set the loss fields of `case` on the trainer as TRL's __init__ does (GRPOConfig defaults elsewhere)."""
    defaults = {f.name: f.default for f in dataclasses.fields(_grpo_config())}
    for name in bridge.TRL_LOSS_FIELDS:
        setattr(trainer.args, name, case.get(name, defaults[name]))
    args = trainer.args
    trainer.loss_type, trainer.beta = args.loss_type, args.beta
    trainer.importance_sampling_level = args.importance_sampling_level
    trainer.max_completion_length = args.max_completion_length
    trainer.epsilon_low = args.epsilon
    trainer.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    trainer.objective = bridge.objective_from_args(args)


def _grpo_config():
    from trl import GRPOConfig

    return GRPOConfig


def loss_inputs(trainer, seed: int = 0) -> dict:
    """A batch as `_generate_and_score_completions` hands it over: 3 groups of 4, ragged completions,
    log-ratios ~ N(0, 0.3²) against π_old (some tokens clipped), a π_ref, signed advantages."""
    g = torch.Generator().manual_seed(seed)
    n, prompt_len, horizon = 12, 2, 6
    vocab = trainer.model.config.vocab_size
    prompt = torch.randint(3, vocab, (n, prompt_len), generator=g)
    completion = torch.randint(3, vocab, (n, horizon), generator=g)
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0], lengths[-1] = 1, horizon
    mask = (torch.arange(horizon) < lengths[:, None]).long()
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": mask, "num_items_in_batch": mask.sum().to(F64)}
    with torch.no_grad():
        logps, _, _ = trainer._logprobs(trainer.model, inputs)
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(n, horizon, generator=g, dtype=F64)
    inputs["ref_per_token_logps"] = logps + 0.3 * torch.randn(n, horizon, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    inputs["advantages"] = adv + 0.1 * torch.sign(adv)
    return inputs


def value_and_gradient(compute_loss, trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = compute_loss(trainer, trainer.model, inputs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(torch.zeros_like(p) if gr is None else gr).flatten() for p, gr in zip(params, grads,
                                                                                              strict=True)])
    return loss.detach(), flat


TRL_OWN = bridge.trl.GRPOTrainer._compute_loss
OURS = bridge.GRPOTrainer._compute_loss


@pytest.mark.parametrize("case", TRL_LOSS_CASES, ids=[case_id(c) for c in TRL_LOSS_CASES])
def test_loss_equals_trls_own_loss_value_and_gradient(fp64_trainer, case):
    configure(fp64_trainer, **case)
    inputs = loss_inputs(fp64_trainer)
    theirs, their_grad = value_and_gradient(TRL_OWN, fp64_trainer, inputs)
    ours, our_grad = value_and_gradient(OURS, fp64_trainer, inputs)
    assert their_grad.abs().max() > 0
    assert abs(float(ours - theirs)) <= TOL, (float(ours), float(theirs))
    assert float((our_grad - their_grad).abs().max()) <= TOL


def test_every_trl_loss_type_but_vespo_is_covered():
    covered = {case.get("loss_type", "dapo") for case in TRL_LOSS_CASES}
    config_doc = _grpo_config().__dataclass_fields__["loss_type"].metadata["help"]
    named = {name for name in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
             if f"'{name}'" in config_doc}
    assert named - covered == {"vespo"}
    with pytest.raises(ValueError, match="vespo"):
        cp.Objective.from_trl(loss_type="vespo")


def test_a_different_objective_is_detected(fp64_trainer):
    """The comparison can fail: Dr GRPO's paper weights are not TRL's grpo loss."""
    configure(fp64_trainer, loss_type="grpo")
    inputs = loss_inputs(fp64_trainer)
    theirs, _ = value_and_gradient(TRL_OWN, fp64_trainer, inputs)
    fp64_trainer.objective = cp.Objective.preset("dr_grpo", beta=0.0)
    ours, _ = value_and_gradient(OURS, fp64_trainer, inputs)
    assert abs(float(ours - theirs)) > 1e-3


# --- a real training run --------------------------------------------------------------------------------
class Recording(bridge.GRPOTrainer):
    """The bridge, keeping every micro-batch its loss saw (detached) for the checks below."""

    def __init__(self, *args, **kwargs):
        self.seen: list[dict] = []
        self.trl_advantages: list[torch.Tensor] = []
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        self._inputs = inputs
        return super()._compute_loss(model, inputs)

    def objective_output(self, logprobs, old_logprobs, advantages, mask, **extra):
        if self.model.training:
            self.seen.append({"logprobs": logprobs.detach().clone(), "old": old_logprobs.clone(),
                              "advantages": advantages.clone(), "mask": mask.clone(),
                              "tokens": self._inputs["completion_ids"].clone(),
                              "groups": self._inputs["companion_group"].clone(),
                              "rewards": self._inputs["companion_rewards"].clone(),
                              "iteration": self.inner_iteration()})
        return super().objective_output(logprobs, old_logprobs, advantages, mask, **extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = trl_toy.model()
    optimizer = cp.InstrumentedAdamW(model.parameters(), lr=1e-2)
    callback = bridge.DiagnosticsCallback()
    trainer = make_trainer(tmp_path_factory.mktemp("run"), model=model, cls=Recording, callbacks=[callback],
                           optimizer=optimizer, loss_type="grpo")
    with bridge.quiet():
        trainer.train()
    return trainer, callback, optimizer


def by_group(batch):
    """Rows sorted by group (stable), so that groups are contiguous for the reference computations."""
    order = torch.argsort(batch["groups"], stable=True)
    return {k: (v[order] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}


def direct_row(batch, group_size=4, clip=0.2):
    """The diagnostics of one micro-batch, recomputed with loops and the trie of cp.prefix (GRPO weights)."""
    b = by_group(batch)
    lp, old, adv, mask = (b[k].double() for k in ("logprobs", "old", "advantages", "mask"))
    n = lp.shape[0]
    ratio = (lp - old).exp()
    valid = mask > 0
    a = adv[:, None].expand_as(ratio)
    low = ((ratio < 1 - clip) & (a < 0) & valid).sum() / valid.sum()
    high = ((ratio > 1 + clip) & (a > 0) & valid).sum() / valid.sum()
    alpha = mask / (n * mask.sum(1, keepdim=True))
    omega = alpha * ratio * ~(((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + clip) & (a > 0)))
    nodes = trie(b["tokens"], b["mask"], omega, adv, group_size)
    per_group = {}
    for node in nodes:
        if node.whole_group:
            per_group[node.group] = max(per_group.get(node.group, 0.0), abs(node.w_agg))
    covariances = []
    for start in range(0, n, group_size):
        big_omega = omega[start:start + group_size].sum(1)
        a_g = adv[start:start + group_size]
        covariances.append(float(((a_g - a_g.mean()) * (big_omega - big_omega.mean())).mean()))
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    return {
        "clip_fraction_low": float(low), "clip_fraction_high": float(high),
        "ratio_min": float(ratio[valid].min()), "ratio_max": float(ratio[valid].max()),
        "past_clip_low": float((ratio[valid] < 1 - clip).double().mean()),
        "past_clip_high": float((ratio[valid] > 1 + clip).double().mean()),
        "w_agg_max": max(per_group.values(), default=0.0),
        "cov_adv_omega": float(np.mean(covariances)),
        "loss": float(-(alpha * surrogate).sum()),
        "inner_step": float(b["iteration"]),
        "reward": float(b["rewards"].mean()),
        "length": float(mask.sum(1).mean()),
    }


def test_training_logs_finite_diagnostics_every_step(run):
    trainer, callback, _ = run
    rows = callback.rows()
    assert len(rows) == trainer.state.global_step == 5
    always = ("loss", "clip_fraction_low", "clip_fraction_high", "ratio_min", "ratio_max", "past_clip_low",
              "past_clip_high", "w_agg_max", "w_agg_mean", "shared_token_frac", "cov_adv_omega", "reward",
              "length", "entropy", "kl_old", "eps_dominated_frac", "opt_grad_norm", "opt_eps_dominated_frac")
    for row in rows:
        assert all(math.isfinite(row[key]) for key in always), row
    assert [row["inner_step"] for row in rows] == [0, 1, 0, 1, 0]  # num_iterations = 2
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "train_loss" not in entry]
    assert len(logged) == 5
    for entry, row in zip(logged, rows, strict=True):
        assert all(key.startswith("companion/") or key in entry for key in entry)
        for key in always:
            assert entry[f"companion/{key}"] == pytest.approx(row[key], rel=1e-9, abs=1e-12)
        assert entry["loss"] == pytest.approx(row["loss"], rel=1e-6, abs=1e-8)  # TRL's logged loss


def test_logged_diagnostics_equal_a_direct_computation(run):
    trainer, callback, _ = run
    assert len(trainer.seen) == 5  # one micro-batch per optimizer step
    for batch, row in zip(trainer.seen, callback.rows(), strict=True):
        for key, value in direct_row(batch).items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    first = [row for row in callback.rows() if row["inner_step"] == 0]
    assert all(row["ratio_min"] == row["ratio_max"] == 1.0 for row in first)  # s = 1 at the first pass
    assert all(abs(row["loss"]) < 1e-7 for row in first)  # Eq. 9: GRPO's loss is 0 at s = 1 (β = 0)
    assert any(row["w_agg_max"] > 1e-4 for row in callback.rows())  # the shared "=" prefix gets a push


def test_advantages_are_trls(run):
    trainer, _, _ = run
    for batch in trainer.seen:
        b = by_group(batch)
        expected = trl_advantages(b["rewards"].double(), 4, scale_rewards="group")
        torch.testing.assert_close(b["advantages"].double(), expected, atol=1e-6, rtol=0)


def test_optimizer_diagnostics_reach_trls_logs(run):
    _, callback, optimizer = run
    rows = callback.rows()
    for key in ("c_t", "grad_norm", "eps_dominated_frac", "sqrt_v_hat_mean"):
        np.testing.assert_allclose([row.get(f"opt_{key}", math.nan) for row in rows], optimizer.history[key])
    fraction = float((cp.theory.eps_ratio(optimizer) >= 1).double().mean())
    assert rows[-1]["eps_dominated_frac"] == pytest.approx(fraction)
    assert rows[-1]["opt_eps_dominated_frac"] == pytest.approx(fraction)


def test_history_is_a_lab_history(run):
    _, callback, _ = run
    history = callback.history()
    assert isinstance(history, cp.lab.History) and len(history) == 5
    assert history["outer_step"].tolist() == [0, 0, 1, 1, 2]
    assert np.isfinite(history.outer("reward")).all() and len(history.outer("reward")) == 3


# --- other objectives, hooks and errors -----------------------------------------------------------------
def test_a_preset_subclass_and_a_loss_hook_train(tmp_path):
    class Halved(cp.Objective):
        def loss(self, *args, **kwargs):
            out = super().loss(*args, **kwargs)
            out.loss = out.loss / 2
            return out

    def hook(logprobs, old_logprobs, advantages, mask, **extra):
        return cp.Objective.preset("dapo").loss(logprobs, old_logprobs, advantages, mask)

    for objective in (cp.Objective.preset("dr_grpo", beta=0.0), Halved(aggregation="token_mean"), hook):
        trainer = make_trainer(tmp_path, objective=objective, max_steps=2, advantages="objective"
                               if not callable(objective) or hasattr(objective, "advantages") else "trl")
        with bridge.quiet():
            trainer.train()
        assert trainer.state.global_step == 2
        assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_the_objective_decides_the_advantages(tmp_path):
    """RLOO's leave-one-out baseline replaces TRL's (r - mean) / std: the same rewards, other advantages."""
    trainer = make_trainer(tmp_path, cls=Recording, objective=cp.Objective.preset("rloo"), max_steps=1,
                           num_iterations=1)
    with bridge.quiet():
        trainer.train()
    b = by_group(trainer.seen[0])
    rewards = b["rewards"].double().view(-1, 4)
    others = (rewards.sum(1, keepdim=True) - rewards) / 3
    torch.testing.assert_close(b["advantages"].double(), (rewards - others).flatten(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("field", "value"), [("entropy_coef", 0.1), ("top_entropy_quantile", 0.5),
                                              ("off_policy_mask_threshold", 0.5)])
def test_unsupported_settings_are_named(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        make_trainer(tmp_path, **{field: value})


def test_vespo_and_bad_advantage_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="vespo"):
        make_trainer(tmp_path, loss_type="vespo")
    with pytest.raises(ValueError, match="advantages"):
        make_trainer(tmp_path, advantages="critic")


def test_companion_works_without_trl_and_names_the_extra():
    code = ("import sys; sys.modules['trl'] = None\n"
            "import companion as cp\n"
            "cp.Objective.from_trl(loss_type='grpo')\n"
            "try:\n    import companion.integrations.trl\n"
            "except ModuleNotFoundError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MissingExtraError" in out and 'pip install "companion[trl]"' in out


def test_a_kl_run_logs_the_kl_to_the_reference(tmp_path):
    """β > 0: TRL builds π_ref from the saved policy; the objective's KL term and kl_ref are logged."""
    saved = tmp_path / "policy"
    trl_toy.model().save_pretrained(saved)
    trl_toy.tokenizer().save_pretrained(saved)
    callback = bridge.DiagnosticsCallback()
    trainer = make_trainer(tmp_path, model=str(saved), callbacks=[callback], beta=0.04, loss_type="grpo",
                           max_steps=2)
    with bridge.quiet():
        trainer.train()
    rows = callback.rows()
    assert trainer.objective.beta == 0.04 and trainer.objective.kl_ratio_weighted
    assert rows[0]["kl_ref"] == pytest.approx(0.0, abs=1e-9)  # π_θ = π_ref before the first step
    assert rows[1]["kl_ref"] > 0 and rows[1]["regulariser"] > 0
    assert rows[1]["loss"] == pytest.approx(rows[1]["policy_loss"] + rows[1]["regulariser"], rel=1e-6)
