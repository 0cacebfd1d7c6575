"""The training loop: determinism, seeds vectorised = single runs, sampling modes, records, bad input."""

import copy
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import companion as cp
from companion import lab
from companion.policies import GRUPolicy, TabularPolicy, TinyGPT2Policy
from companion.tasks import make_task


@dataclass
class _Out:
    loss: torch.Tensor
    clip_fraction_low: torch.Tensor
    clip_fraction_high: torch.Tensor


class PlainClipped:
    """A small clipped surrogate written out here (Eq. 1 with beta = 0), so the loop is tested on its own:
    A_i = r_i - mean_group (divided by the group std when ``std``), alpha = 1 / (G |o_i|)."""

    def __init__(self, std: bool = True, eps: float = 0.2) -> None:
        self.std, self.eps = std, eps

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        r = rewards.view(-1, group_size)
        a = r - r.mean(1, keepdim=True)
        return (a / (r.std(1, keepdim=True) + 1e-4) if self.std else a).reshape(-1)

    def loss(self, logprobs, old_logprobs, adv, mask, ref_logprobs=None) -> _Out:
        ratio = torch.exp(logprobs - old_logprobs)
        a = adv.unsqueeze(-1)
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - self.eps, 1 + self.eps) * a)
        per_sequence = (surrogate * mask).sum(-1) / mask.sum(-1)
        tokens = mask.sum()
        low = (((ratio < 1 - self.eps) & (a < 0)) * mask).sum() / tokens
        high = (((ratio > 1 + self.eps) & (a > 0)) * mask).sum() / tokens
        return _Out(-per_sequence.mean(), low, high)


def tabular(task, seeds=1, seed=0):
    return TabularPolicy.for_task(task, num_seeds=seeds, init_scale=0.3, seed=seed, dtype=torch.float64)


def run(policy, task, objective=None, **kw):
    kw = {"steps": 6, "group_size": 4, "prompts_per_step": 3, "inner_steps": 2, "lr": 0.1, **kw}
    return lab.train(policy, task, objective or PlainClipped(), device="cpu", **kw)


def assert_same_history(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


# --- determinism and seeds ----------------------------------------------------------------------------
def test_two_runs_with_the_same_seed_are_equal_and_another_seed_differs():
    task = make_task("parity", n=2, length="short")
    a, b, c = tabular(task, 2), tabular(task, 2), tabular(task, 2)
    ha, hb, hc = run(a, task, seed=3), run(b, task, seed=3), run(c, task, seed=4)
    assert_same_history(ha, hb)
    assert torch.equal(a.logits, b.logits)
    assert not np.array_equal(ha["reward"], hc["reward"])


def test_gru_runs_are_deterministic():
    task = make_task("pick", template="#", template_mode="forced")
    p1, p2 = GRUPolicy.for_task(task, seed=1), GRUPolicy.for_task(task, seed=1)
    assert_same_history(run(p1, task, lr=0.01), run(p2, task, lr=0.01))


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.AdamW(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.5),
], ids=["adamw", "sgd"])
def test_vectorised_seeds_equal_single_seed_runs(make_optimizer):
    task = make_task("pick", length="short", template="#", template_mode="shared")
    together = tabular(task, seeds=3, seed=7)
    h = run(together, task, seed=20, optimizer=make_optimizer)
    for s in range(3):
        alone = tabular(task, seeds=1, seed=7 + s)
        h1 = run(alone, task, seed=20 + s, optimizer=make_optimizer)
        assert torch.allclose(alone.logits[0], together.logits[s], atol=1e-12, rtol=0)
        assert_same_history(h.seed(s), h1, atol=1e-12)
    assert h["reward"].shape == (12, 3) and h["prefix_prob"].shape == (12, 3, 1)


class NotVmappable(PlainClipped):
    """The same loss, but it inspects tensor values in Python, which torch.func.vmap refuses."""

    def loss(self, logprobs, old_logprobs, adv, mask, ref_logprobs=None) -> _Out:
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("mask: a completion without tokens")
        return super().loss(logprobs, old_logprobs, adv, mask, ref_logprobs)


def test_an_objective_that_cannot_be_vmapped_runs_seed_by_seed_with_the_same_result():
    task = make_task("parity", n=2)
    a, b = tabular(task, 3), tabular(task, 3)
    assert_same_history(run(a, task), run(b, task, NotVmappable()), atol=1e-12)
    assert torch.allclose(a.logits, b.logits, atol=1e-12, rtol=0)


# --- sampling modes -----------------------------------------------------------------------------------
def test_fixed_sampling_does_not_depend_on_theta_on_policy_does():
    task = make_task("pick", length="long")
    fixed = [run(tabular(task, 2), task, sampling="fixed", lr=lr, steps=10) for lr in (0.01, 1.0)]
    on = [run(tabular(task, 2), task, sampling="on_policy", lr=lr, steps=10) for lr in (0.01, 1.0)]
    for key in ("reward", "length", "accuracy"):
        np.testing.assert_array_equal(fixed[0][key], fixed[1][key])
    assert not np.array_equal(on[0]["reward"], on[1]["reward"])
    assert not np.array_equal(fixed[0]["entropy"], fixed[1]["entropy"])  # theta did move


def test_on_policy_runs_share_randomness_reward_scale_with_adam_changes_nothing():
    """Prop 2 with shared random numbers: Adam (eps negligible, beta = 0) takes the same steps when the
    rewards are scaled by phi = 100, so the runs draw the same samples; SGD's steps scale with phi."""
    def runs(make_optimizer):
        out = []
        for scale in (1.0, 100.0):
            task = make_task("pick", length="short", reward_scale=scale)
            policy = tabular(task, 2)
            out.append(run(policy, task, PlainClipped(std=False), optimizer=make_optimizer, steps=15))
        return out

    adam = runs(lambda p: torch.optim.Adam(p, lr=0.1, eps=1e-12))
    np.testing.assert_array_equal(adam[0]["accuracy"], adam[1]["accuracy"])
    np.testing.assert_allclose(adam[1]["reward"], 100 * adam[0]["reward"], rtol=1e-12)
    sgd = runs(lambda p: torch.optim.SGD(p, lr=0.1))
    assert not np.array_equal(sgd[0]["accuracy"], sgd[1]["accuracy"])


# --- it learns ----------------------------------------------------------------------------------------
def test_a_short_run_improves_the_exact_reward_on_the_easiest_task():
    task = make_task("pick")
    policy = TabularPolicy.for_task(task, num_seeds=8)
    before = policy.exact_expected_reward(task)
    h = run(policy, task, steps=25, inner_steps=1, group_size=8, prompts_per_step=4)
    after = policy.exact_expected_reward(task)
    assert (before - 0.2).abs().max() < 1e-6  # uniform over 4 letters + '#' at the first token
    assert (after > before + 0.4).all()
    assert h.outer("accuracy")[-5:].mean() > h.outer("accuracy")[:5].mean() + 0.3


def test_gru_learns_pick():
    task = make_task("pick")
    h = run(GRUPolicy.for_task(task, seed=0), task, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
            steps=40, inner_steps=1, group_size=8, prompts_per_step=4)
    accuracy = h.outer("accuracy")
    assert accuracy[-10:].mean() > accuracy[:10].mean() + 0.25


def test_tiny_gpt2_learns_pick_in_a_few_seconds():
    task = make_task("pick")
    policy = TinyGPT2Policy.for_task(task, seed=0)
    h = lab.train(policy, task, PlainClipped(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), steps=40,
                  group_size=8, prompts_per_step=4, seed=0, device="cpu")
    accuracy = h.outer("accuracy")
    assert accuracy[-10:].mean() > accuracy[:10].mean() + 0.25


# --- records ------------------------------------------------------------------------------------------
def test_records_first_inner_step_is_on_policy_and_template_probability_is_exact():
    task = make_task("pick", template="#", template_mode="forced")
    policy = TabularPolicy.for_task(task, num_seeds=2, dtype=torch.float64)  # uniform at the start
    h = run(policy, task)
    first, second = h["inner_step"] == 0, h["inner_step"] == 1
    assert (h["ratio_min"][first] == 1).all() and (h["ratio_max"][first] == 1).all()
    assert (h["kl_old"][first] == 0).all() and (h["kl_old"][second] > 0).all()
    assert (h["kl_ref"][0] == 0).all() and (h["kl_ref"][-1] > 0).all()
    assert h["prefix_prob"][0] == pytest.approx(1 / 5)  # '#' among a, b, c, d, # (EOS not allowed yet)
    assert ((h["length"] >= 3) & (h["length"] <= task.max_new_tokens)).all()
    assert h["entropy"][0] == pytest.approx(np.log(5) * 2 / 3 + np.log(6) / 3, abs=0.2)
    np.testing.assert_array_equal(h["outer_step"], np.repeat(np.arange(6), 2))
    assert h.outer("reward").shape == (6, 2) and set(h.keys()) >= {"tied_fraction",
        "reward", "accuracy", "length", "entropy", "kl_old", "kl_ref", "clip_fraction_low",
        "clip_fraction_high", "ratio_min", "ratio_max", "loss", "prefix_prob"}


def test_template_modes_forced_and_shared_reach_the_batch():
    generators = [torch.Generator().manual_seed(0)]
    for mode in ("forced", "shared"):
        task = make_task("pick", template="##", template_mode=mode)
        policy = TabularPolicy.for_task(task, init_scale=2.0)
        batch = lab._rollout(policy, copy.deepcopy(policy), task, PlainClipped(), generators, 6, 4,
                             "on_policy", torch.device("cpu"))
        prefixes = batch.completions[0, :, :2].reshape(6, 4, 2)
        assert (prefixes == prefixes[:, :1]).all()  # shared by the whole group
        if mode == "forced":
            assert (prefixes == task.template_ids).all()
        else:
            assert len({tuple(p) for p in prefixes[:, 0].tolist()}) > 1  # sampled once per group


def test_instrumented_adamw_diagnostics_are_joined_and_new_batch_is_called():
    task = make_task("pick")
    h = run(tabular(task, 2), task, optimizer=lambda p: cp.InstrumentedAdamW(p, lr=0.1))
    assert len(h["opt_grad_norm"]) == len(h) == 12 and np.isfinite(h["opt_grad_norm"]).all()
    np.testing.assert_array_equal(h["opt_batch"], h["outer_step"] + 1)
    assert "opt_grad_norm" not in run(tabular(task), task)


def test_history_api():
    task = make_task("pick")
    h = run(tabular(task, 3), task)
    assert len(h) == 12 and h.num_seeds == 3 and h.seed(1)["reward"].shape == (12,)
    np.testing.assert_array_equal(h.seed(2)["loss"], h["loss"][:, 2])
    with pytest.raises(KeyError, match="reward"):
        h["rewards"]
    assert h.config["group_size"] == 4 and "12 records" in repr(h)


# --- device, threads, progress ------------------------------------------------------------------------
def test_auto_device_and_threads(monkeypatch):
    assert lab.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    task = make_task("pick")
    torch.set_num_threads(1)
    monkeypatch.setenv("COMPANION_THREADS", "2")
    seen = []
    lab.train(tabular(task), task, PlainClipped(), steps=1, group_size=2, device="cpu",
              optimizer=lambda p: seen.append(torch.get_num_threads()) or torch.optim.SGD(p, lr=0.1))
    assert seen == [2] and torch.get_num_threads() == 1
    monkeypatch.setenv("COMPANION_THREADS", "many")
    with pytest.raises(ValueError, match="COMPANION_THREADS"):
        run(tabular(task), task)


def test_progress_bar_is_silent_by_default_under_pytest_and_shown_on_request(capfd):
    task = make_task("pick")
    run(tabular(task), task)
    assert capfd.readouterr().err == ""
    assert "PYTEST_CURRENT_TEST" in os.environ
    run(tabular(task), task, progress=True)
    assert "train" in capfd.readouterr().err


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "word"), [
    ({"group_size": 1}, "group_size"), ({"inner_steps": 0}, "inner_steps"),
    ({"prompts_per_step": 0}, "prompts_per_step"), ({"steps": -1}, "steps"),
    ({"sampling": "offline"}, "sampling"),
])
def test_bad_arguments_are_named(kwargs, word):
    task = make_task("pick")
    with pytest.raises(ValueError, match=word):
        run(tabular(task), task, **kwargs)


def test_bad_optimizer_task_and_context():
    task = make_task("pick")
    with pytest.raises(TypeError, match="optimizer"):
        run(tabular(task), task, optimizer="adam")
    with pytest.raises(TypeError, match="task"):
        run(tabular(task), "pick")
    long_prompts = make_task("copy", n=6)
    with pytest.raises(ValueError, match="n_positions"):
        run(TinyGPT2Policy.for_task(long_prompts, n_positions=8), long_prompts)
    with pytest.raises(ValueError, match="vocab"):
        run(tabular(make_task("parity")), task)


def test_tied_fraction_counts_groups_with_equal_rewards():
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0, 2.0, 2.0], [0.0, 1.0, 3.0, 3.0, 1.0, 1.0]])
    np.testing.assert_allclose(lab._tied_fraction(rewards, 2).numpy(), [1.0, 2 / 3])
    np.testing.assert_allclose(lab._tied_fraction(rewards, 3).numpy(), [0.0, 0.0])


def test_seedwise_advantages_check_every_seed_not_only_the_first():
    rewards = torch.zeros(3, 8)
    rewards[2, 5] = float("nan")
    with pytest.raises(ValueError, match="rewards"):
        lab.seedwise_advantages(cp.Objective.preset("grpo"), rewards, 4)
    ok = lab.seedwise_advantages(cp.Objective.preset("grpo"), torch.arange(24.0).view(3, 8), 4)
    assert ok.shape == (3, 8) and torch.allclose(ok[1], cp.Objective.preset("grpo").advantages(
        torch.arange(8.0, 16.0), 4))


# --- non-finite parameters right after the optimizer step (chapter 4) ---------------------------------
def test_adamw_with_eps_zero_is_caught_right_after_the_step_and_explained():
    """Unvisited tabular nodes have g = v = 0, so torch's AdamW(eps=0) steps them by 0/0 = NaN."""
    task = make_task("pick")
    with pytest.raises(FloatingPointError, match="optimizer step produced non-finite") as caught:
        run(tabular(task), task, optimizer=lambda p: torch.optim.AdamW(p, lr=0.1, eps=0.0), steps=3)
    message = str(caught.value)
    for words in ("'logits' has", "NaN", "gradients going in were finite", "eps=0", "0/0",
                  "torch.finfo(torch.float32).tiny"):
        assert words in message, words
    assert "pad masked positions" not in message  # not the old, misleading error of the next forward pass


def test_a_tiny_eps_trains_where_eps_zero_fails_and_changes_nothing_else():
    task = make_task("pick")
    tiny = torch.finfo(torch.float64).tiny
    policies = [tabular(task, 2) for _ in range(2)]
    runs = [run(policy, task, optimizer=lambda p, e=eps: torch.optim.AdamW(p, lr=0.1, eps=e), steps=5)
            for policy, eps in zip(policies, (tiny, 1e-300), strict=True)]
    assert all(torch.isfinite(p.logits).all() for p in policies)
    assert_same_history(*runs)  # eps below every sqrt(v_hat) > 0: the same steps


def test_nonfinite_gradients_are_blamed_not_the_optimizer():
    class NaNLoss(PlainClipped):
        def loss(self, *args, **kwargs):
            out = super().loss(*args, **kwargs)
            return _Out(out.loss * float("nan"), out.clip_fraction_low, out.clip_fraction_high)

    task = make_task("pick")
    with pytest.raises(FloatingPointError, match="gradients going in were already non-finite"):
        run(tabular(task), task, NaNLoss())


def test_an_overflowing_update_is_reported_with_finite_gradients():
    task = make_task("pick")
    policy = tabular(task)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e308)
    policy.logits.grad = torch.full_like(policy.logits, -2.0)  # finite, but the step 2e308 is not
    optimizer.step()
    with pytest.raises(FloatingPointError, match=r"update itself overflowed.*lower the learning rate of SGD"):
        lab.check_finite_parameters(policy, optimizer)


def test_the_finiteness_check_passes_silently_and_sees_every_trainable_parameter():
    task = make_task("pick")
    policy = GRUPolicy.for_task(task)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    lab.check_finite_parameters(policy, optimizer)  # all finite: no error
    with torch.no_grad():
        policy.head.bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"'head.bias' has 0 NaN and 1 inf of 6 entries"):
        lab.check_finite_parameters(policy, optimizer)
    policy.head.bias.requires_grad_(False)  # frozen parameters are not the optimizer's doing
    lab.check_finite_parameters(policy, optimizer)


def test_finite_parameters_whose_sum_overflows_pass_the_finiteness_check():
    task = make_task("pick")
    policy = GRUPolicy.for_task(task)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    with torch.no_grad():
        policy.head.bias.fill_(3e38)  # finite in float32; their sum is inf
    assert not torch.isfinite(policy.head.bias.sum())
    lab.check_finite_parameters(policy, optimizer)
    with torch.no_grad():
        policy.head.bias[1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"'head.bias' has 1 NaN and 0 inf of 6 entries"):
        lab.check_finite_parameters(policy, optimizer)
# --- chapter 5: the trust region after each step, and a target-KL early stop --------------------------
GRPO = cp.Objective.preset("grpo", beta=0.0)


def fresh_adam(lr=0.1, beta1=0.9):
    return lambda p: torch.optim.AdamW(p, lr=lr, betas=(beta1, 0.999), weight_decay=0.0)


def test_after_step_records_the_state_the_next_inner_step_starts_from():
    task = make_task("pick")
    h = run(tabular(task, 3), task, GRPO, optimizer=fresh_adam(), steps=2, inner_steps=4, after_step=True)
    nxt = (h["inner_step"] > 0)
    prev = np.roll(nxt, -1)  # the row before each row with inner_step > 0
    deviation = np.maximum(h["ratio_max"][nxt] - 1, 1 - h["ratio_min"][nxt])
    np.testing.assert_allclose(h["ratio_dev_after"][prev], deviation, rtol=1e-5, atol=1e-7)
    clip_fraction = h["clip_fraction_low"] + h["clip_fraction_high"]
    assert (h["past_clip_after"][prev] >= clip_fraction[nxt] - 1e-7).all()  # fewer tokens in its denominator
    assert (h["kl_old_after"] > 0).all() and (h["past_clip_after"] > 0).any()
    assert "kl_old_after" not in run(tabular(task), task, GRPO)


def test_kl_old_estimate_is_the_exact_kl_in_expectation():
    """Averaged with pi_old's probabilities over every token of one softmax, the per-token terms
    s - 1 - log s give exactly KL(pi_old || pi_theta): the estimator is unbiased on-policy."""
    old = torch.log_softmax(torch.tensor([0.3, -1.0, 0.5, 0.0], dtype=torch.float64), 0)
    new = torch.log_softmax(torch.tensor([0.9, -1.2, 0.1, 0.2], dtype=torch.float64), 0)
    weights = old.exp()
    per_token = [lab.kl_old_estimate(new[i].view(1, 1, 1), old[i].view(1, 1, 1), torch.ones(1, 1, 1))
                 for i in range(4)]
    expectation = sum(w * t for w, t in zip(weights, per_token, strict=True))
    assert torch.allclose(expectation, (weights * (old - new)).sum(), rtol=1e-12)


def test_trust_region_columns_by_hand():
    old = torch.zeros(1, 2, 2, dtype=torch.float64)
    before = torch.tensor([[[0.3, -0.1], [-0.4, 0.0]]], dtype=torch.float64)
    after = torch.tensor([[[0.5, -0.1], [-0.3, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    clipped_before = torch.tensor([[[True, False], [True, False]]])
    clipped_after = torch.tensor([[[True, False], [False, False]]])
    cols = lab.trust_region_columns(before, after, old, mask, advantages, clipped_before, clipped_after)
    assert cols["past_clip_after"].item() == pytest.approx(1 / 3)
    assert cols["clipped_drift_after"].item() == pytest.approx((0.2 - 0.1) / 2)  # out by 0.2, back by 0.1
    assert cols["clipped_motion_after"].item() == pytest.approx((0.2 + 0.1) / 2)
    assert cols["ratio_dev_after"].item() == pytest.approx(np.expm1(0.5))
    kl = sum(np.expm1(x) - x for x in (0.5, -0.1, -0.3)) / 3
    assert cols["kl_old_after"].item() == pytest.approx(kl)
    tied = lab.trust_region_columns(before, after, old, mask, torch.zeros(1, 2, dtype=torch.float64),
                                    clipped_before, clipped_after & False)
    assert tied["past_clip_after"].item() == 0.0
    plain = lab.trust_region_columns(before, after, old, mask, advantages, None, None)
    assert np.isnan(plain["past_clip_after"].item()) and np.isfinite(plain["kl_old_after"].item())


def test_without_momentum_a_clipped_tabular_token_stops_and_with_momentum_it_drifts_out():
    """Prop. 3 on the tabular policy: Adam with beta1 = 0 barely moves tokens whose gradient the clip zeroed
    (only other tokens of the same softmax move them); with beta1 = 0.9 they keep moving away from s = 1."""
    task = make_task("pick")
    drift = {}
    for beta1 in (0.0, 0.9):
        h = run(TabularPolicy.for_task(task, num_seeds=16), task, GRPO, optimizer=fresh_adam(0.05, beta1),
                steps=1, inner_steps=8, group_size=8, prompts_per_step=4, after_step=True)
        drift[beta1] = h["clipped_drift_after"][3:].mean()
    assert drift[0.9] > 0.02 and abs(drift[0.0]) < 0.005


def test_target_kl_stops_exactly_like_a_shorter_loop_on_a_single_seed_policy():
    task = make_task("pick")

    def gru_run(**kw):
        policy = GRUPolicy.for_task(task, seed=3)
        h = run(policy, task, GRPO, optimizer=fresh_adam(0.01), steps=1, **kw)
        return policy, h

    stopped, h = gru_run(inner_steps=6, target_kl=1e-9)
    short, _ = gru_run(inner_steps=1)
    for a, b in zip(stopped.parameters(), short.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(h["stopped"], [0, 1, 1, 1, 1, 1])
    _, free = gru_run(inner_steps=6, target_kl=1e3)
    assert (free["stopped"] == 0).all()


def test_target_kl_stops_each_seed_on_its_own():
    """Seeds of one tabular tensor stop at different inner steps; each ends where its single-seed run ends
    (one outer step, so the shared Adam step counter cannot matter)."""
    task = make_task("pick")
    kw = {"optimizer": fresh_adam(0.05), "steps": 1, "inner_steps": 8, "group_size": 8, "prompts_per_step": 4,
          "target_kl": 0.01}
    together = TabularPolicy.for_task(task, num_seeds=4, dtype=torch.float64)
    h = run(together, task, GRPO, seed=11, **kw)
    stops = h["stopped"].argmax(0)
    assert len(set(stops.tolist())) > 1 and (np.diff(h["stopped"], axis=0) >= 0).all()
    for s in range(4):
        alone = TabularPolicy.for_task(task, dtype=torch.float64)
        run(alone, task, GRPO, seed=11 + s, **kw)
        assert torch.allclose(alone.logits[0], together.logits[s], atol=1e-12, rtol=0)


def test_target_kl_bad_input():
    task = make_task("pick")
    with pytest.raises(ValueError, match="target_kl"):
        run(tabular(task), task, GRPO, target_kl=0.0)

    class NoSeedAxis(torch.nn.Module):
        num_seeds = 2

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="seed axis"):
        lab._check_trust_region(NoSeedAxis(), 0.1)
# --- on_step: the batches behind the records ----------------------------------------------------------
def test_on_step_hands_over_each_batch_after_each_inner_step():
    task = make_task("pick", length="short")
    objective = cp.Objective.preset("dr_grpo")  # beta = 0.04: the loss reads pi_ref too
    policy = tabular(task, seeds=2)
    start = policy.logits.detach().clone()
    calls = []

    def keep(outer_step, inner_step, batch):
        calls.append((outer_step, inner_step, batch, policy.logits.detach().clone()))

    history = run(policy, task, objective, steps=3, inner_steps=2, on_step=keep)
    assert [(k, i) for k, i, _, _ in calls] == [(k, i) for k in range(3) for i in range(2)]
    assert all(calls[2 * k][2] is calls[2 * k + 1][2] for k in range(3))  # one batch per outer step
    assert calls[0][2] is not calls[2][2]
    assert not torch.equal(calls[0][3], start)  # called after the optimizer step
    assert torch.equal(calls[-1][3], policy.logits)
    for k in range(3):
        b = calls[2 * k][2]
        for s in range(2):  # the first inner step's loss, recomputed from the batch alone (s = 1)
            out = objective.loss(b.old_logprobs[s], b.old_logprobs[s], b.advantages[s], b.mask[s],
                                 ref_logprobs=b.ref_logprobs[s])
            assert out.loss.item() == pytest.approx(history.outer("loss")[k, s], rel=1e-12, abs=1e-15)
        np.testing.assert_array_equal(b.rewards.mean(1).numpy(), history.outer("reward")[k])


def test_on_step_none_is_the_default_and_changes_nothing():
    task = make_task("pick")
    a, b = tabular(task), tabular(task)
    assert_same_history(run(a, task), run(b, task, on_step=lambda k, i, batch: None))
# --- issue 13: a real Objective through the multi-seed path; the automatic progress line (perf) --------
@pytest.mark.parametrize("name", ["grpo", "grpo_r1", "dapo", "gtpo", "gspo", "reinforce_pp"])
def test_multi_seed_runs_with_an_objective_equal_single_seed_runs(name):
    """Each seed's records and parameters equal a run of that seed alone: batch sums (DAPO's token count,
    REINFORCE++'s whitening), the KL to pi_ref (R1) and GTPO's group search never mix seeds."""
    task = make_task("pick", length="short", template="#", template_mode="shared")
    objective = cp.Objective.preset(name, **({"gtpo_entropy_threshold": None} if name == "gtpo" else {}))
    together = tabular(task, seeds=3, seed=11)
    h = run(together, task, objective, seed=5)
    assert np.isfinite(h["loss"]).all() and (h["loss"] != 0).any()
    for s in range(3):
        alone = tabular(task, seeds=1, seed=11 + s)
        h1 = run(alone, task, objective, seed=5 + s)
        assert torch.allclose(alone.logits[0], together.logits[s], atol=1e-12, rtol=0)
        assert_same_history(h.seed(s), h1, atol=1e-12)


def test_the_grpo_preset_trains_exactly_as_the_hand_written_clipped_objective():
    """cp.Objective.preset("grpo") is PlainClipped (group std with Bessel, + 1e-4; 1/(G|o_i|); clip 0.2):
    the same run, record by record, whether the lab batches the seeds or not."""
    task = make_task("parity", n=2, length="short")
    for seeds in (1, 3):
        a, b = tabular(task, seeds), tabular(task, seeds)
        ours = run(a, task, cp.Objective.preset("grpo"), lr=0.5)
        theirs = run(b, task, PlainClipped(), lr=0.5)
        for key in ("reward", "loss", "clip_fraction_low", "clip_fraction_high", "kl_old", "ratio_max"):
            np.testing.assert_allclose(ours[key], theirs[key], atol=1e-12, rtol=0, err_msg=key)
        assert torch.allclose(a.logits, b.logits, atol=1e-12, rtol=0)
        assert ours["clip_fraction_high"].max() > 0 and ours["clip_fraction_low"].max() > 0  # clipped


def test_an_objective_s_bad_input_is_named_in_a_multi_seed_run():
    task = make_task("pick")
    gtpo_without_groups = cp.Objective.preset("gtpo")
    with pytest.raises(ValueError, match="group_size"):
        lab.seedwise_loss(gtpo_without_groups, *(torch.zeros(2, 4, 3),) * 3, torch.ones(2, 4, 3), None,
                          tokens=torch.zeros(2, 4, 3, dtype=torch.long), entropies=torch.zeros(2, 4, 3))
    fields = lab.seedwise_loss(cp.Objective.preset("grpo"), torch.zeros(2, 4, 3), torch.zeros(2, 4, 3),
                               torch.tensor([[1.0, -1, 0, 0], [0, 0, 2, -2]]), torch.ones(2, 4, 3), None)
    assert fields["loss"].shape == (2,) and set(fields) >= {"loss", "clip_fraction_high"}
    assert run(tabular(task, 2), task, cp.Objective.preset("grpo"), steps=1)["loss"].shape == (2, 2)


_PROGRESS_LINES: list = []


class _RecordingProgress:

    def __init__(self, total, desc="", *, started=None):
        self.total, self.desc, self.done, self.closed = total, desc, 0, False
        _PROGRESS_LINES.append(self)

    def update(self, n=1):
        self.done += n

    def close(self):
        self.closed = True


@pytest.mark.parametrize(("after_seconds", "progress", "shown"), [
    (0.0, None, True), (60.0, None, False), (0.0, False, False), (60.0, True, True)])
def test_the_progress_line_opens_by_itself_on_long_runs_outside_pytest(monkeypatch, after_seconds, progress,
                                                                       shown):
    monkeypatch.setattr(lab, "under_pytest", lambda: False)
    monkeypatch.setattr(lab, "PROGRESS_AFTER_SECONDS", after_seconds)
    monkeypatch.setattr(lab, "Progress", _RecordingProgress)
    _PROGRESS_LINES.clear()
    task = make_task("pick")
    run(tabular(task), task, steps=5, progress=progress)
    if not shown:
        assert _PROGRESS_LINES == []
        return
    (line,) = _PROGRESS_LINES
    assert (line.total, line.desc, line.done, line.closed) == (5, "train", 5, True)


def test_the_automatic_progress_line_stays_silent_under_pytest(monkeypatch):
    monkeypatch.setattr(lab, "PROGRESS_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(lab, "Progress", _RecordingProgress)
    _PROGRESS_LINES.clear()
    task = make_task("pick")
    run(tabular(task), task, steps=3)
    assert _PROGRESS_LINES == []
    run(tabular(task), task, steps=1, progress=True)  # a one-step run has nothing left to show
    assert _PROGRESS_LINES == []


def test_batched_streams_are_an_explicit_choice_with_their_own_guarantees():
    """streams="batched": one generator for all seeds. Reproducible, identical to "per_seed" for one seed,
    and, unlike "per_seed", a seed's run depends on how many seeds run with it."""
    task = make_task("pick", length="short", template="#", template_mode="shared")
    a = run(tabular(task, 3), task, streams="batched", seed=4)
    b = run(tabular(task, 3), task, streams="batched", seed=4)
    assert_same_history(a, b)
    assert a.config["streams"] == "batched"
    one_per_seed = run(tabular(task, 1), task, seed=4)
    one_batched = run(tabular(task, 1), task, seed=4, streams="batched")
    assert_same_history(one_per_seed, one_batched)
    two = run(tabular(task, 2), task, streams="batched", seed=4)
    assert not np.array_equal(two["reward"][:, 0], a["reward"][:, 0])  # seed 0 draws with its neighbours
    per_seed = run(tabular(task, 3), task, seed=4)
    assert_same_history(per_seed.seed(0), one_per_seed)
    gru = make_task("pick")
    assert_same_history(run(GRUPolicy.for_task(gru, seed=1), gru, lr=0.01, streams="batched"),
                        run(GRUPolicy.for_task(gru, seed=1), gru, lr=0.01))
    with pytest.raises(ValueError, match="streams"):
        run(tabular(task), task, streams="shared")


def test_the_default_optimizer_is_torch_adamw_bit_for_bit():
    task = make_task("add", base=3, length="short")
    ours, torchs = TabularPolicy.for_task(task, num_seeds=4), TabularPolicy.for_task(task, num_seeds=4)
    h = run(ours, task, cp.Objective.preset("grpo_r1"), lr=0.3, steps=10)
    h_torch = run(torchs, task, cp.Objective.preset("grpo_r1"), lr=0.3, steps=10,
                  optimizer=lambda p: torch.optim.AdamW(p, lr=0.3))
    assert torch.equal(ours.logits, torchs.logits)
    assert_same_history(h, h_torch)
    assert (ours.logits.detach() == 0).any()  # v = 0 somewhere: the zero-safe sqrt ran


def test_the_config_records_every_choice():
    task = make_task("pick")
    h = run(tabular(task, 2), task, cp.Objective.preset("dapo"), seed=3, sampling="fixed", streams="batched")
    assert h.config == dict(task="pick", objective="dapo", steps=6, group_size=4, prompts_per_step=3,
                            inner_steps=2, seed=3, sampling="fixed", device="cpu", streams="batched",
                            target_kl=None)
    assert run(tabular(task), task, steps=1).config["objective"] == "PlainClipped"  # no name: the class


def test_zero_steps_give_an_empty_history():
    task = make_task("pick")
    policy = tabular(task, 2)
    before = policy.logits.detach().clone()
    h = run(policy, task, steps=0)
    assert len(h) == 0 and h["outer_step"].shape == (0,) and torch.equal(policy.logits, before)


class WithExtras(PlainClipped):
    """Its output carries a per-token tensor and a string beside the scalars: only scalars are recorded."""

    def loss(self, logprobs, old_logprobs, adv, mask, ref_logprobs=None):
        out = super().loss(logprobs, old_logprobs, adv, mask, ref_logprobs)
        out.per_token = torch.ones_like(mask)
        out.note = "not a tensor"
        out.scalar_with_grad = logprobs.sum() * 0
        return out


def test_only_scalar_tensors_of_a_custom_objective_are_recorded_and_detached():
    task = make_task("pick")
    h = run(tabular(task, 2), task, WithExtras())
    assert {"loss", "clip_fraction_low", "clip_fraction_high", "scalar_with_grad"} <= set(h.keys())
    assert "per_token" not in h and "note" not in h
    assert h["scalar_with_grad"].shape == (12, 2)


def test_optimizer_columns_keep_the_totals_not_the_groups():
    task = make_task("pick")
    h = run(tabular(task, 2), task, optimizer=lambda p: cp.InstrumentedAdamW(p, lr=0.1))
    assert "opt_grad_norm" in h and not any("/" in key for key in h)


def test_a_sampled_template_is_sampled_per_completion_not_per_group():
    task = make_task("pick", template="##", template_mode="sampled")
    policy = TabularPolicy.for_task(task, init_scale=0.5)
    generators = [torch.Generator().manual_seed(0)]
    batch = lab._rollout(policy, copy.deepcopy(policy), task, PlainClipped(), generators, 6, 4, "on_policy",
                         torch.device("cpu"))
    heads = batch.completions[0, :, :2].reshape(6, 4, 2)
    assert not (heads == heads[:, :1]).all()  # the completions of a group do not share their first tokens


def test_kl_ref_false_skips_the_reference_only_where_nothing_uses_it():
    task = make_task("pick", length="short")
    with_ref, without = tabular(task, 2), tabular(task, 2)
    h = run(with_ref, task, cp.Objective.preset("grpo"))
    h_skip = run(without, task, cp.Objective.preset("grpo"), kl_ref=False)
    assert "kl_ref" in h and "kl_ref" not in h_skip
    assert torch.equal(with_ref.logits, without.logits)  # beta = 0: the same training
    assert_same_history(h_skip, lab.History({k: v for k, v in h.columns.items() if k != "kl_ref"}, 2))
    # an objective with a KL term still gets pi_ref (and the column comes free)
    r1 = cp.Objective.preset("grpo_r1")
    a, b = tabular(task, 2), tabular(task, 2)
    assert_same_history(run(a, task, r1), run(b, task, r1, kl_ref=False))
    # fixed sampling samples from pi_ref; a custom objective gets ref_logprobs=None
    seen = []

    class Spy(PlainClipped):
        def loss(self, logprobs, old_logprobs, adv, mask, ref_logprobs=None):
            seen.append(ref_logprobs)
            return super().loss(logprobs, old_logprobs, adv, mask, ref_logprobs)

    fixed = run(tabular(task, 2), task, Spy(), sampling="fixed", kl_ref=False, steps=2)
    assert "kl_ref" not in fixed and all(r is None for r in seen)
    gpt = make_task("pick")
    h_gpt = lab.train(TinyGPT2Policy.for_task(gpt, seed=0), gpt, cp.Objective.preset("grpo"), steps=2,
                      group_size=4, prompts_per_step=2, lr=1e-3, device="cpu", kl_ref=False)
    h_gpt_ref = lab.train(TinyGPT2Policy.for_task(gpt, seed=0), gpt, cp.Objective.preset("grpo"), steps=2,
                          group_size=4, prompts_per_step=2, lr=1e-3, device="cpu")
    np.testing.assert_array_equal(h_gpt["loss"], h_gpt_ref["loss"])


def test_ratio_extremes_bracket_one_after_the_first_inner_step():
    task = make_task("pick", length="short")
    h = run(tabular(task, 2), task, lr=1.0)
    later = h["inner_step"] == 1
    assert (h["ratio_max"][later] >= h["ratio_min"][later]).all()
    assert (h["ratio_max"][later] > 1).any() and (h["ratio_min"][later] < 1).any()


def test_an_optimizer_reused_across_runs_reports_each_run_s_rows_only():
    task = make_task("pick")
    policy = tabular(task, 2)
    opt = cp.InstrumentedAdamW(policy.parameters(), lr=0.1)
    first = run(policy, task, optimizer=opt)
    second = run(policy, task, optimizer=opt, steps=3)
    assert len(opt.history) == 12 + 6
    np.testing.assert_array_equal(second["opt_step"], np.arange(13, 19))
    np.testing.assert_array_equal(first["opt_step"], np.arange(1, 13))


class _ListHistory(torch.optim.SGD):
    history: list = []  # noqa: RUF012 (a `history` that is not InstrumentedAdamW's: ignored)


def test_an_optimizer_history_without_keys_is_ignored():
    task = make_task("pick")
    h = run(tabular(task), task, optimizer=lambda p: _ListHistory(p, lr=0.1))
    assert not any(key.startswith("opt_") for key in h)


def test_a_shared_template_records_the_probability_of_the_sampled_prefix():
    task = make_task("pick", template="#", template_mode="shared")
    policy = TabularPolicy.for_task(task, init_scale=2.0, seed=3)
    batch = lab._rollout(policy, copy.deepcopy(policy), task, PlainClipped(),
                         [torch.Generator().manual_seed(0)], 8, 4, "on_policy", torch.device("cpu"))
    logp, _ = policy.logprobs(task, batch.prompt_idx, batch.completions)
    shared = lab._prefix_probs(policy, task, batch.prompt_idx, batch.completions, logp)
    torch.testing.assert_close(shared, logp[..., :1].detach().exp().mean(1))
    forced = make_task("pick", template="#", template_mode="forced")
    template = lab._prefix_probs(policy, forced, batch.prompt_idx, batch.completions, logp)
    assert not torch.allclose(shared, template)  # the sampled prefix, not the template's '#'


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompts_per_step": 0}, "prompts_per_step must be >= 1"), ({"steps": -1}, "steps must be >= 0"),
    ({"inner_steps": 0}, "inner_steps must be >= 1"), ({"streams": "x"}, "streams must be one of"),
])
def test_bad_arguments_are_named_first(kwargs, message):
    task = make_task("pick")
    with pytest.raises(ValueError, match="^" + message):
        run(tabular(task), task, **kwargs)


def test_one_prompt_per_step_and_the_default_of_fifty_steps():
    task = make_task("pick")
    h = lab.train(tabular(task), task, PlainClipped(), group_size=2, prompts_per_step=1, device="cpu")
    assert len(h) == 50 and h.config["steps"] == 50 and h.config["prompts_per_step"] == 1


@pytest.mark.parametrize("mode", ["forced", "shared"])
def test_a_one_token_template_reaches_the_batch(mode):
    task = make_task("pick", template="#", template_mode=mode)
    policy = TabularPolicy.for_task(task, init_scale=2.0)
    generators = [torch.Generator().manual_seed(0)]
    batch = lab._rollout(policy, copy.deepcopy(policy), task, PlainClipped(), generators, 6, 4, "on_policy",
                         torch.device("cpu"))
    heads = batch.completions[0, :, 0].reshape(6, 4)
    assert (heads == heads[:, :1]).all()  # shared by each group
    if mode == "forced":
        assert (heads == task.vocab.index("#")).all()


def test_a_kl_field_with_beta_zero_does_not_need_the_reference():
    task = make_task("pick")
    h = run(tabular(task, 2), task, cp.Objective.preset("grpo", kl="k3", beta=0.0), kl_ref=False)
    assert "kl_ref" not in h


def test_a_single_seed_custom_objective_runs_without_the_reference():
    task = make_task("pick")
    h = run(tabular(task), task, PlainClipped(), kl_ref=False)
    assert "kl_ref" not in h and np.isfinite(h["loss"]).all()


def test_an_explicit_device_is_kept_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lab.resolve_device(None).type == "cuda"
    task = make_task("pick")
    assert run(tabular(task), task, steps=1).config["device"] == "cpu"  # run() passes device="cpu"


def test_the_progress_estimate_is_the_time_per_step_times_the_steps(monkeypatch):
    """A fake clock: every reading is one second later. After the first of 10 steps the run looks like ten
    seconds or more: over a threshold of 5 s the line opens, under one of 50 s it does not."""
    clock = iter(range(10**6))

    class FakeTime:
        @staticmethod
        def perf_counter():
            return float(next(clock))

    monkeypatch.setattr(lab, "time", FakeTime)
    monkeypatch.setattr(lab, "under_pytest", lambda: False)
    monkeypatch.setattr(lab, "Progress", _RecordingProgress)
    task = make_task("pick")
    for threshold, shown in ((5.0, True), (50.0, False)):
        monkeypatch.setattr(lab, "PROGRESS_AFTER_SECONDS", threshold)
        _PROGRESS_LINES.clear()
        run(tabular(task), task, steps=10, inner_steps=1)
        assert bool(_PROGRESS_LINES) == shown, threshold


def test_a_seed_of_a_history_keeps_the_config():
    task = make_task("pick")
    h = run(tabular(task, 3), task)
    one = h.seed(2)
    assert one.num_seeds == 1 and one.config == h.config and one.config["group_size"] == 4


def test_a_custom_objective_gets_the_reference_log_probs_on_every_seed():
    seen = []

    class Spy(PlainClipped):
        def loss(self, logprobs, old_logprobs, adv, mask, ref_logprobs=None):
            seen.append(ref_logprobs)
            return super().loss(logprobs, old_logprobs, adv, mask, ref_logprobs)

    task = make_task("pick")
    run(tabular(task, 3), task, Spy(), steps=1, inner_steps=1)
    assert seen and all(r is not None and r.shape == (12, task.max_new_tokens) for r in seen)


def test_the_default_seed_is_zero():
    task = make_task("pick")
    default = lab.train(tabular(task), task, PlainClipped(), steps=3, group_size=4, device="cpu")
    zero = lab.train(tabular(task), task, PlainClipped(), steps=3, group_size=4, device="cpu", seed=0)
    assert default.config["seed"] == 0
    assert_same_history(default, zero)
