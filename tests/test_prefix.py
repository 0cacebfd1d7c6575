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
