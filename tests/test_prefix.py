"""companion.prefix: the trie of a group's completions and W_agg at every node (Prop. 1, Eq. 16-18), checked
against autograd on a tabular policy whose trie nodes are its parameters."""

import pytest
import torch

import companion as cp
from companion import prefix


def tabular_batch(rewards, seed=0, template="##", length="none"):
    """One prompt, G completions with a forced two-token template: the whole group shares it."""
    task = cp.make_task("pick", template=template, template_mode="forced", max_new_tokens=6, length=length)
    policy = cp.TabularPolicy.for_task(task, init_scale=0.5, seed=seed, dtype=torch.float64)
    G = len(rewards)
    g = torch.Generator().manual_seed(seed)
    prompts = torch.zeros(1, 1, dtype=torch.long)
    forced = task.template_ids.expand(1, 1, -1)
    completions = policy.sample(task, prompts, G, [g], prefix=forced)
    prompt_idx = prompts.repeat_interleave(G, 1)
    logp, _ = policy.logprobs(task, prompt_idx, completions)
    mask = task.completion_mask(completions).double()
    return policy, completions[0], logp[0], mask[0], torch.tensor(rewards, dtype=torch.float64)


@pytest.mark.parametrize("name", ["grpo_r1", "gtpo", "dr_grpo", "dapo", "gpg"])
def test_node_gradient_is_minus_the_sum_of_child_w_agg_times_grad_log_pi(name):
    """The logits of the node before token t receive −Σ_children W_agg(child) (e_{y_child} − p) (Eq. 16)."""
    policy, tokens, logp, mask, rewards = tabular_batch([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    obj = cp.Objective.preset(name, beta=0.0, entropy_coef=0.0, gtpo_entropy_threshold=None)
    adv = obj.advantages(rewards, 6)
    out = obj.loss(logp, logp.detach(), adv, mask, tokens=tokens, group_size=6)
    out.loss.backward()
    nodes = prefix.trie(tokens, mask, out.weights, adv, group_size=6)
    node_ids = policy.node_ids(tokens.unsqueeze(0))[0]
    logits = policy.logits.detach()[0, 0].clone()
    logits[:, policy.eos_id] = float("-inf")  # EOS is not allowed inside the template (min_new_tokens)
    probs = torch.softmax(logits, -1)
    for parent_depth in range(2):  # the template nodes, shared by the whole group
        parent = int(node_ids[0, parent_depth])
        expected = torch.zeros(probs.shape[-1], dtype=torch.float64)
        for node in nodes:
            if node.depth == parent_depth:
                onehot = torch.nn.functional.one_hot(torch.tensor(node.prefix[-1]), probs.shape[-1]).double()
                expected -= node.w_agg * (onehot - probs[parent])
        torch.testing.assert_close(policy.logits.grad[0, 0, parent], expected, atol=1e-14, rtol=0)


def test_template_nodes_cancel_for_constant_weights_and_not_for_1_over_length():
    _, tokens, logp, mask, rewards = tabular_batch([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], seed=3)
    assert len(set(mask.sum(-1).tolist())) > 1  # ragged lengths
    for name, cancels in (("dr_grpo", True), ("grpo_r1", False)):
        obj = cp.Objective.preset(name, beta=0.0)
        adv = obj.advantages(rewards, 6)
        out = obj.loss(logp, logp.detach(), adv, mask)
        by_depth = prefix.w_agg_by_depth(tokens, mask, out.weights, adv, 6)
        assert (by_depth[:2].abs().max() < 1e-15) == cancels, name
        assert torch.all(by_depth[2:] == 0) or not cancels


def test_nodes_partition_the_group_at_every_depth():
    _, tokens, _, mask, rewards = tabular_batch([1.0, 0.0, 0.0, 1.0], seed=5)
    nodes = prefix.trie(tokens, mask, torch.ones_like(mask), rewards - rewards.mean(), 4)
    for t in range(tokens.shape[1]):
        at_t = [n for n in nodes if n.depth == t]
        members = sorted(i for n in at_t for i in n.members)
        assert members == sorted(i for i in range(4) if mask[i, t] > 0)
    root = [n for n in nodes if n.depth == 0]
    assert len(root) == 1 and root[0].whole_group and root[0].shared
    assert root[0].advantage_sum == pytest.approx(0.0, abs=1e-15)


def test_bad_input():
    tokens = torch.zeros(4, 3, dtype=torch.long)
    ones = torch.ones(4, 3)
    with pytest.raises(TypeError, match="tokens"):
        prefix.trie(ones, ones, ones, torch.zeros(4), 2)
    with pytest.raises(ValueError, match="weights"):
        prefix.trie(tokens, ones, torch.ones(4, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="advantages"):
        prefix.trie(tokens, ones, ones, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="group_size"):
        prefix.trie(tokens, ones, ones, torch.zeros(4), 3)


# --- prefix_forces: the first-step force on a prefix, group by group (App. B.2, score-function identity) ----
def _group_gradient_on_logit(policy, task, objective, prompt_idx, completions, group, group_size, position,
                             token):
    """Independent reference: autograd through the tabular policy on one group's loss alone; the gradient of
    J (= −loss) on the logit of ``token`` at the node before ``position`` of that group's first completion."""
    rows = slice(group * group_size, (group + 1) * group_size)
    prompts, tokens = prompt_idx[:, rows], completions[:, rows]
    policy.zero_grad()
    logp, entropy = policy.logprobs(task, prompts, tokens)
    mask = task.completion_mask(tokens[0]).double()
    adv = objective.advantages(task.reward(prompts, tokens)[0].double(), group_size)
    old = logp[0].detach()
    out = objective.loss(logp[0], old, adv, mask, ref_logprobs=old, tokens=tokens[0], entropies=entropy[0],
                         group_size=group_size)
    out.loss.backward()
    node = int(policy.node_ids(tokens[0, :1])[0, position])
    return -float(policy.logits.grad[0, int(prompts[0, 0]), node, token])


@pytest.mark.parametrize(("mode", "template", "position", "token"),
                         [("forced", "##", 0, None), ("forced", "##", 1, None), ("shared", "##", 1, None),
                          ("sampled", "", 0, 1)])
@pytest.mark.parametrize("name", ["grpo_r1", "dr_grpo", "dapo"])
def test_prefix_forces_equal_autograd_through_the_policy_per_group(mode, template, position, token, name):
    task = cp.make_task("pick", template=template, template_mode=mode, length="short", alphabet="ab")
    policy = cp.TabularPolicy.for_task(task, init_scale=0.7, seed=2, dtype=torch.float64)
    objective = cp.Objective.preset(name)
    forces = prefix.prefix_forces(policy, task, objective, groups=5, group_size=4, position=position,
                                  token=token, seed=11)
    prompt_idx, completions = prefix._sample_groups(policy, task, 5, 4, 11)
    probe = forces.token
    for g in range(5):
        expected = _group_gradient_on_logit(policy, task, objective, prompt_idx, completions, g, 4, position,
                                            probe)
        assert forces.logit[g].item() == pytest.approx(expected, abs=1e-15)
    if mode != "sampled":  # the whole group shares the prefix: the push is the node's W_agg (App. B.2)
        logp, _ = policy.logprobs(task, prompt_idx, completions)
        rewards = task.reward(prompt_idx, completions)[0].double()
        adv = objective.advantages(rewards, 4)
        for g in range(5):
            rows = slice(4 * g, 4 * g + 4)
            lp = logp[0, rows].detach()
            out = objective.loss(lp, lp, adv[rows], task.completion_mask(completions[0, rows]).double(),
                                 ref_logprobs=lp)
            nodes = prefix.trie(completions[0, rows], task.completion_mask(completions[0, rows]), out.weights,
                                adv[rows], 4)
            (node,) = [n for n in nodes if n.depth == position]
            assert node.whole_group and forces.push[g].item() == pytest.approx(node.w_agg, abs=1e-15)


def test_forced_template_is_pushed_on_average_a_sampled_one_is_not():
    """GRPO's 1/|o_i| weights with short answers winning: the forced template's logit has a positive expected
    force, many standard errors away from 0; sampled once per group, its expected force is 0 (score
    function)."""
    results = {}
    for mode in ("forced", "shared"):
        task = cp.make_task("pick", template="#", template_mode=mode, length="short", alphabet="ab")
        policy = cp.TabularPolicy.for_task(task, num_seeds=4, dtype=torch.float64)
        results[mode] = prefix.prefix_forces(policy, task, cp.Objective.preset("grpo_r1"), groups=256)
    forced, shared = results["forced"].mean(), results["shared"].mean()
    assert forced.n == shared.n == 4 * 256
    assert forced.z > 6 and abs(shared.z) < 3
    assert results["forced"].mean("push").z > 6 and results["shared"].mean("push").z > 6  # E[W_agg] > 0


def test_constant_weights_give_no_push_with_exact_advantages():
    """Dr GRPO, rewards in {0, 1/2, 3/4, 1} and G = 8: every Σ A_i is exact, so every group's push is 0.0."""
    task = cp.make_task("pick", template="#", template_mode="forced", length="short", alphabet="ab")
    policy = cp.TabularPolicy.for_task(task, num_seeds=2, dtype=torch.float64)
    forces = prefix.prefix_forces(policy, task, cp.Objective.preset("dr_grpo"), groups=64)
    assert torch.equal(forces.push, torch.zeros(128, dtype=torch.float64))
    assert forces.logit.abs().max() < 1e-15  # (1 − p) and p of the logit force round separately


def test_prefix_forces_on_a_gru_policy():
    task = cp.make_task("pick", template="##", template_mode="forced", length="long", alphabet="ab")
    policy = cp.GRUPolicy.for_task(task, hidden=8, dtype=torch.float64)
    forces = prefix.prefix_forces(policy, task, cp.Objective.preset("grpo_r1"), groups=16, position=1)
    assert forces.logit.shape == forces.push.shape == (16,)
    assert forces.logit.dtype == torch.float64 and (forces.position, forces.token) == (1, 2)


def test_estimate_is_the_mean_and_its_standard_error():
    samples = torch.tensor([1.0, 2.0, 4.0, 7.0])
    est = prefix.Estimate.of(samples)
    assert est.mean == pytest.approx(3.5) and est.n == 4
    assert est.stderr == pytest.approx(float(torch.tensor([1.0, 2.0, 4.0, 7.0]).std()) / 2)
    assert est.z == pytest.approx(3.5 / est.stderr) and "± " in str(est)
    assert prefix.Estimate.of([0.0, 0.0]).z == 0.0 and prefix.Estimate.of([1.0, 1.0]).z == float("inf")
    with pytest.raises(ValueError, match="at least 2"):
        prefix.Estimate.of([1.0])
    with pytest.raises(ValueError, match="finite"):
        prefix.Estimate.of([1.0, float("nan")])


def test_prefix_forces_bad_input():
    task = cp.make_task("pick", template="#", template_mode="forced", alphabet="ab")
    policy = cp.TabularPolicy.for_task(task)
    obj = cp.Objective.preset("grpo_r1")
    with pytest.raises(ValueError, match="groups"):
        prefix.prefix_forces(policy, task, obj, groups=1)
    with pytest.raises(ValueError, match="group_size"):
        prefix.prefix_forces(policy, task, obj, group_size=1)
    with pytest.raises(ValueError, match="position"):
        prefix.prefix_forces(policy, task, obj, position=task.max_new_tokens)
    with pytest.raises(ValueError, match="give token="):
        prefix.prefix_forces(policy, task, obj, position=1)
    with pytest.raises(ValueError, match="token"):
        prefix.prefix_forces(policy, task, obj, token=task.eos_id + 1)
    with pytest.raises(TypeError, match="companion policy"):
        prefix.prefix_forces(object(), task, obj)
    with pytest.raises(ValueError, match="which"):
        prefix.prefix_forces(policy, task, obj, groups=2).mean("both")
# --- issue 13: padding beyond the template, the sign of W_agg, every shared node (perf) ----------------
def test_padding_beyond_a_completion_makes_no_node_whatever_its_ids():
    """Rows that end right after the template: their padding (mask 0) holds ids that other rows of the
    group do have there; the trie must stop each row at its last token."""
    tokens = torch.tensor([[4, 4, 0, 5, 5], [4, 4, 0, 1, 5], [4, 4, 5, 5, 5], [4, 4, 0, 1, 2]])
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    padded_like_others = tokens.clone()
    padded_like_others[0, 3:] = torch.tensor([1, 5])  # row 1's ids: would join its nodes if read
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    weights = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) * mask
    nodes = prefix.trie(padded_like_others, mask, weights, adv, group_size=4)
    assert nodes == prefix.trie(tokens, mask, weights, adv, group_size=4)
    assert max(n.depth for n in nodes) == 4 and [n.members for n in nodes if n.depth == 4] == [(1,)]
    assert [n.members for n in nodes if n.depth == 3] == [(1, 3)]
    assert {n.prefix: n.members for n in nodes if n.depth == 2} == {(4, 4, 0): (0, 1, 3), (4, 4, 5): (2,)}
    depth = prefix.w_agg_by_depth(padded_like_others, mask, weights, adv, 4, whole_group_only=False)
    assert depth[4] == 0 and depth[3] == pytest.approx(float(weights[1, 3] * -1.0 + weights[3, 3] * -0.5))


def test_w_agg_has_the_sign_of_the_short_side_under_1_over_length_weights():
    """GRPO's ω = 1/(G|o_i|) (Prop. 1, Eq. 18): on the template, shared by the whole group,
    W_agg = Σ_i A_i/(G|o_i|) is positive when the rewarded completions are the short ones and negative
    when they are the long ones; Dr GRPO's constant ω gives exactly 0."""
    checked = 0
    for seed in range(4):
        _, tokens, logp, mask, _ = tabular_batch([0.0] * 6, seed=seed)
        lengths = mask.sum(-1)
        if len(set(lengths.tolist())) < 2:
            continue
        short = (lengths < lengths.max()).double()
        checked += 1
        for rewards, sign in ((short, 1.0), (1.0 - short, -1.0)):
            for name, expected_sign in (("grpo_r1", sign), ("dr_grpo", 0.0)):
                obj = cp.Objective.preset(name, beta=0.0)
                adv = obj.advantages(rewards, 6)
                out = obj.loss(logp, logp.detach(), adv, mask)
                by_depth = prefix.w_agg_by_depth(tokens, mask, out.weights, adv, 6)
                by_hand = float((out.weights[:, 0] * adv).sum())  # every row passes through depth 0
                assert by_depth[0].item() == pytest.approx(by_hand, abs=1e-15)
                assert by_depth[1].item() == pytest.approx(float((out.weights[:, 1] * adv).sum()), abs=1e-15)
                if expected_sign == 0.0:
                    assert abs(by_depth[0]) < 1e-15
                else:
                    assert by_depth[0] * expected_sign > 1e-3, (name, seed, by_depth[0])
    assert checked >= 2


def test_every_shared_node_counts_only_with_whole_group_only_false():
    tokens = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 5, 3], [7, 7, 7], [7, 7, 8], [7, 9, 9]])
    mask = torch.ones(3 * 2, 3)
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])
    weights = torch.tensor([[1.0, 2.0, 3.0]]).expand(6, 3) / 10
    whole = prefix.w_agg_by_depth(tokens, mask, weights, adv, group_size=3)
    shared = prefix.w_agg_by_depth(tokens, mask, weights, adv, group_size=3, whole_group_only=False)
    # depth 0: both groups share their first token (1 and 7); depth 1: only pairs share (1 2) and (7 7)
    assert whole.tolist() == pytest.approx([0.1 * (1 - 2 + 0.5) + 0.1 * (3 - 1 + 0.25), 0.0, 0.0])
    assert shared.tolist() == pytest.approx([whole[0].item(), 0.2 * (1 - 2) + 0.2 * (3 - 1), 0.0])
    nodes = prefix.trie(tokens, mask, weights, adv, group_size=3)
    pair = next(n for n in nodes if n.prefix == (7, 7))
    assert pair.shared and not pair.whole_group and pair.group == 1 and pair.members == (3, 4)
    assert pair.w_agg == pytest.approx(0.2 * 3 - 0.2 * 1) and pair.advantage_sum == pytest.approx(2.0)
    single = next(n for n in nodes if n.prefix == (1, 5))
    assert not single.shared and not single.whole_group and single.group_size == 3


def test_advantages_per_token_use_their_first_column_and_inputs_are_detached():
    tokens = torch.tensor([[1, 2], [1, 3]])
    mask = torch.ones(2, 2)
    weights = torch.full((2, 2), 0.5, requires_grad=True)
    per_token = torch.tensor([[2.0, 99.0], [-1.0, 99.0]], requires_grad=True)
    nodes = prefix.trie(tokens, mask, weights, per_token, group_size=2)
    root = nodes[0]
    assert root.prefix == (1,) and root.w_agg == pytest.approx(0.5 * 2 - 0.5 * 1)
    assert root.advantage_sum == pytest.approx(1.0)
    assert [n.group for n in prefix.trie(torch.tensor([[1], [1], [2], [2]]), torch.ones(4, 1),
                                         torch.ones(4, 1), torch.zeros(4), 2)] == [0, 1]


@pytest.mark.parametrize("group_size", [0, -2, True, 2.0, None])
def test_group_size_must_be_a_positive_int(group_size):
    tokens = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="group_size"):
        prefix.trie(tokens, torch.ones(4, 3), torch.ones(4, 3), torch.zeros(4), group_size)


def test_groups_of_one_are_valid_and_share_nothing():
    tokens = torch.tensor([[1, 2], [1, 2], [1, 3]])
    nodes = prefix.trie(tokens, torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1.0, -1.0, 2.0]), 1)
    assert [n.group for n in nodes] == [0, 0, 1, 1, 2, 2]
    assert all(n.whole_group and not n.shared for n in nodes)
    assert prefix.w_agg_by_depth(tokens, torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1.0, -1.0, 2.0]),
                                 1).tolist() == [2.0, 2.0]
