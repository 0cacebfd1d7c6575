"""Policies: exact tabular probabilities by hand, sampling, shared randomness, GRU and GPT-2 log-probs
against plain per-token loops, local tokenizer, bad input."""

import itertools
import math

import pytest
import torch

from companion.policies import GRUPolicy, TabularPolicy, TinyGPT2Policy, build_tokenizer, num_parameters
from companion.tasks import make_task


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.long)


def hand_node(prefix: tuple[int, ...], V: int) -> int:
    """Base-V trie numbering written out: all shorter prefixes first, then the prefix read as a number."""
    return sum(V ** d for d in range(len(prefix))) + sum(tok * V ** (len(prefix) - 1 - j)
                                                          for j, tok in enumerate(prefix))


@pytest.fixture
def hand_case():
    """pick over 'ab' (vocab a, b, #; EOS = 3), 3 new tokens. Prompt 0: root logits give
    p(a, b, #) = (1/4, 2/4, 1/4) (EOS is forbidden at t = 0); after 'b', p(EOS) = 5/8."""
    task = make_task("pick", alphabet="ab", max_new_tokens=3)
    policy = TabularPolicy.for_task(task, dtype=torch.float64)
    with torch.no_grad():
        policy.logits[0, 0, hand_node((), 3)] = f64(0.0, math.log(2), 0.0, math.log(3))
        policy.logits[0, 0, hand_node((1,), 3)] = f64(0.0, 0.0, 0.0, math.log(5))
    return task, policy


def test_tabular_node_numbering_is_the_base_v_trie_and_a_bijection():
    task = make_task("pick", alphabet="ab", max_new_tokens=4)
    policy = TabularPolicy.for_task(task)
    prefixes = [p for t in range(4) for p in itertools.product(range(3), repeat=t)]
    assert sorted(hand_node(p, 3) for p in prefixes) == list(range(policy.logits.shape[2]))
    comp = torch.tensor([[2, 0, 1, 3]])
    assert policy.node_ids(comp)[0].tolist() == [hand_node(p, 3) for p in ((), (2,), (2, 0), (2, 0, 1))]


def test_tabular_logprobs_hand_computed(hand_case):
    task, policy = hand_case
    completions = torch.tensor([[[1, 3, 3], [0, 2, 2]]])  # 'b.' and 'a##'
    logp, entropy = policy.logprobs(task, torch.tensor([[0, 0]]), completions)
    assert torch.allclose(logp[0, 0], f64(math.log(1 / 2), math.log(5 / 8), 0.0), atol=1e-14)
    assert torch.allclose(logp[0, 1], f64(*[math.log(1 / 4)] * 3), atol=1e-14)
    root_entropy = -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5))
    assert entropy[0, 0, 0].item() == pytest.approx(root_entropy, abs=1e-12)
    assert entropy[0, 0, 2].item() == 0.0  # after EOS: not in the loss


def test_tabular_exact_expected_reward_hand_computed(hand_case):
    task, policy = hand_case
    # prompt 0 ('a' is right): p(first = a) = 1/4; prompt 1 ('b'), uniform over a, b, #: 1/3
    assert policy.exact_expected_reward(task).item() == pytest.approx((1 / 4 + 1 / 3) / 2, abs=1e-12)


def test_tabular_exact_expected_reward_matches_brute_force_with_length_knob():
    task = make_task("pick", alphabet="ab", max_new_tokens=4, length="short", template="#",
                     template_mode="sampled")
    policy = TabularPolicy.for_task(task, num_seeds=2, init_scale=1.0, seed=5, dtype=torch.float64)
    V, eos, T = 3, 3, 4
    for s in range(2):
        total, mass = 0.0, 0.0
        for p in range(task.num_prompts):
            for seq in policy.sequences(task).tolist():
                prob, prefix = 1.0, ()
                for t, tok in enumerate(seq):
                    logits = policy.logits[s, p, hand_node(prefix, V)].tolist()
                    allowed = [j for j in range(V + 1) if not (j == eos and t < task.min_new_tokens)]
                    z = sum(math.exp(logits[j]) for j in allowed)
                    prob *= math.exp(logits[tok]) / z if tok in allowed else 0.0
                    if tok == eos:
                        break
                    prefix = (*prefix, tok)
                reward = task.reward(torch.tensor(p), torch.tensor(seq)).item()
                total, mass = total + prob * reward / task.num_prompts, mass + prob / task.num_prompts
        assert mass == pytest.approx(1.0, abs=1e-12)
        assert policy.exact_expected_reward(task)[s].item() == pytest.approx(total, abs=1e-12)
    assert len(policy.sequences(task)) == 1 + 3 + 9 + 27 + 81 and task.max_new_tokens == T


def test_tabular_sampling_frequencies_match_the_probabilities(hand_case):
    task, policy = hand_case
    comps = policy.sample(task, torch.tensor([[0]]), 8000, gens(0))[0]
    first = torch.bincount(comps[:, 0], minlength=4).double() / len(comps)
    assert torch.allclose(first, f64(0.25, 0.5, 0.25, 0.0), atol=0.02)
    b_then_eos = ((comps[:, 0] == 1) & (comps[:, 1] == 3)).double().mean().item()
    assert b_then_eos == pytest.approx(0.5 * 5 / 8, abs=0.02)
    assert (comps[:, 1:][comps[:, :-1] == 3] == 3).all()  # EOS-filled after the first EOS


def test_tabular_seeds_are_independent_runs_and_share_randomness():
    task = make_task("parity", n=2)
    many = TabularPolicy.for_task(task, num_seeds=3, init_scale=0.5, seed=10, dtype=torch.float64)
    prompts = torch.tensor([[0, 3], [1, 2], [3, 3]])
    together = many.sample(task, prompts, 4, gens(0, 1, 2))
    for s in range(3):
        alone = TabularPolicy.for_task(task, init_scale=0.5, seed=10 + s, dtype=torch.float64)
        assert torch.equal(alone.logits[0], many.logits[s])
        assert torch.equal(alone.sample(task, prompts[s:s + 1], 4, gens(s))[0], together[s])
    # same uniforms, slightly different parameters: almost every choice is the same
    nudged = TabularPolicy.for_task(task, num_seeds=3, init_scale=0.5, seed=10, dtype=torch.float64)
    with torch.no_grad():
        nudged.logits.mul_(1.001)
    again = nudged.sample(task, prompts, 4, gens(0, 1, 2))
    same = (again == together).all(-1).double().mean().item()
    assert same >= 0.9


def test_min_new_tokens_forbids_eos_in_sampling_and_in_logprobs():
    task = make_task("pick", template="##", template_mode="forced")
    policy = TabularPolicy.for_task(task, num_seeds=2)
    with torch.no_grad():
        policy.logits[..., task.eos_id] = 5.0  # EOS would win almost always
    comps = policy.sample(task, torch.zeros(2, 3, dtype=torch.long), 5, gens(0, 1),
                          prefix=task.template_ids.expand(2, 3, -1))
    assert (comps[..., :2] == task.template_ids).all() and (comps[..., 2] != task.eos_id).all()
    assert (comps[..., 3] == task.eos_id).float().mean() > 0.9
    logp, _ = policy.logprobs(task, torch.zeros(2, 15, dtype=torch.long), comps)
    assert torch.allclose(logp[..., 0], torch.full_like(logp[..., 0], -math.log(5)))  # 5 non-EOS tokens


def test_tabular_size_and_depth_errors():
    with pytest.raises(ValueError, match="depth"):
        TabularPolicy(("a", "b"), 1, depth=9)
    with pytest.raises(ValueError, match="too large"):
        TabularPolicy(tuple("abcdefgh"), 4, depth=8, num_seeds=64)
    task = make_task("pick")
    with pytest.raises(ValueError, match="vocab"):
        TabularPolicy.for_task(make_task("parity")).sample(task, zeros(1, 1), 2, gens(0))
    with pytest.raises(ValueError, match="generators"):
        TabularPolicy.for_task(task, num_seeds=2).sample(task, zeros(2, 1), 2, gens(0))


def test_gru_logprobs_match_a_per_token_loop():
    task = make_task("copy", template="#", template_mode="sampled")
    policy = GRUPolicy.for_task(task, hidden=16, seed=3, dtype=torch.float64)
    prompts = torch.tensor([[0, 3]])
    comps = policy.sample(task, prompts, 3, gens(0))
    pid = prompts.repeat_interleave(3, 1)
    logp, _ = policy.logprobs(task, pid, comps)
    mask = task.completion_mask(comps[0])
    for n in range(comps.shape[1]):
        h = None
        for tok in task.prompts[pid[0, n]].tolist():
            out, h = policy.gru(policy.embed(torch.tensor([[tok]])), h)
        for t, tok in enumerate(comps[0, n].tolist()):
            if mask[n, t] == 0:
                assert logp[0, n, t].item() == 0.0
                continue
            logits = policy.head(out[0, -1])
            if t < task.min_new_tokens:
                logits[task.eos_id] = -math.inf
            assert logp[0, n, t].item() == pytest.approx(torch.log_softmax(logits, -1)[tok].item(), abs=1e-10)
            out, h = policy.gru(policy.embed(torch.tensor([[tok]])), h)


def test_tokenizer_is_local_and_round_trips():
    task = make_task("add", base=5)
    tok = build_tokenizer(task.vocab)
    assert tok("3+4").input_ids == task.encode("3+4").tolist()
    assert tok.eos_token_id == task.eos_id and tok.pad_token_id == task.eos_id + 1
    assert tok.decode(task.encode("12+0").tolist()) == "12+0"


def test_gpt2_logprobs_match_a_manual_forward_per_token(capfd):
    task = make_task("add", base=5, template="#", template_mode="forced")
    policy = TinyGPT2Policy.for_task(task, seed=1)
    prompts = torch.tensor([[3, 17]])
    prefix = task.template_ids.expand(1, 2, -1)
    comps = policy.sample(task, prompts, 4, gens(0), prefix=prefix)
    pid = prompts.repeat_interleave(4, 1)
    logp, entropy = policy.logprobs(task, pid, comps)
    mask = task.completion_mask(comps[0])
    with torch.no_grad():
        for n in range(comps.shape[1]):
            seq = torch.cat([task.prompts[pid[0, n]], comps[0, n]])
            for t in range(comps.shape[2]):
                if mask[n, t] == 0:
                    assert logp[0, n, t].item() == 0.0
                    continue
                prefix_ids = seq[: task.prompt_len + t].unsqueeze(0)
                logits = policy.model(input_ids=prefix_ids).logits[0, -1, : task.eos_id + 1].double()
                if t < task.min_new_tokens:
                    logits[task.eos_id] = -math.inf
                ref = torch.log_softmax(logits, -1)
                assert logp[0, n, t].item() == pytest.approx(ref[comps[0, n, t]].item(), abs=2e-5)
                p = ref.exp()
                assert entropy[0, n, t].item() == pytest.approx(-(p * ref.clamp(min=-1e30)).sum().item(),
                                                                abs=2e-5)
    assert capfd.readouterr().err == ""  # no transformers warning on stderr (strict nbval)


def test_gpt2_sampling_is_seeded_valid_and_quiet(capfd):
    task = make_task("pick", template="##", template_mode="forced")
    policy = TinyGPT2Policy.for_task(task, seed=0)
    prompts = torch.tensor([[0, 1, 2]])
    prefix = task.template_ids.expand(1, 3, -1)
    a = policy.sample(task, prompts, 8, gens(5), prefix=prefix)
    b = policy.sample(task, prompts, 8, gens(5), prefix=prefix)
    assert torch.equal(a, b) and a.shape == (1, 24, task.max_new_tokens)
    assert int(a.max()) <= task.eos_id  # no <pad> or <unk>
    assert (a[0, :, :2] == task.template_ids).all() and (a[0, :, 2] != task.eos_id).all()
    assert not torch.equal(a, policy.sample(task, prompts, 8, gens(6), prefix=prefix))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    policy.sample(task, prompts, 8, gens(5))
    assert torch.equal(torch.rand(1), before)  # the global RNG is left alone
    assert capfd.readouterr().err == ""


def test_gpt2_bad_input_vocab_mismatch_and_context():
    from transformers import GPT2Config, GPT2LMHeadModel

    task = make_task("pick")
    small = GPT2LMHeadModel(GPT2Config(vocab_size=4, n_positions=16, n_embd=8, n_layer=1, n_head=1))
    with pytest.raises(ValueError, match="tokenizer"):
        TinyGPT2Policy(task.vocab, model=small)
    with pytest.raises(ValueError, match="tokenizer must map"):
        TinyGPT2Policy(task.vocab, tokenizer=build_tokenizer(("b", "a", "c", "d", "#")))
    policy = TinyGPT2Policy.for_task(make_task("copy", n=4), n_positions=6)
    with pytest.raises(ValueError, match="n_positions"):
        policy.sample(make_task("copy", n=4), torch.zeros(1, 1, dtype=torch.long), 2, gens(0))
    with pytest.raises(ValueError, match="vocab"):
        policy.sample(task, torch.zeros(1, 1, dtype=torch.long), 2, gens(0))


def test_num_parameters_counts_one_seed():
    task = make_task("pick", max_new_tokens=3)
    assert num_parameters(TabularPolicy.for_task(task, num_seeds=4)) == 4 * (1 + 5 + 25) * 6
    assert num_parameters(TinyGPT2Policy.for_task(task)) > 50_000


# --- issue 13: the frozen table path and the vectorised node ids (perf) --------------------------------
def test_a_frozen_tabular_policy_answers_from_a_table_with_the_same_numbers():
    import copy

    task = make_task("add", base=3, length="short")
    policy = TabularPolicy.for_task(task, num_seeds=3, init_scale=1.5, seed=4)
    frozen = copy.deepcopy(policy).requires_grad_(False)
    generators = [torch.Generator().manual_seed(s) for s in range(3)]
    prompts = torch.stack([task.sample_prompts(5, g) for g in generators])
    completions = policy.sample(task, prompts, 4, generators)
    prompt_idx = prompts.repeat_interleave(4, dim=1)
    for m in (None, 2):
        logp, entropy = policy.logprobs(task, prompt_idx, completions, min_new_tokens=m)
        table_logp, table_entropy = frozen.logprobs(task, prompt_idx, completions, min_new_tokens=m)
        assert frozen._frozen_table is not None  # the table path ran
        assert torch.equal(logp.detach(), table_logp) and torch.equal(entropy, table_entropy)
    with torch.no_grad():
        frozen.logits.mul_(0.5)  # an in-place change rebuilds the table
        policy.logits.mul_(0.5)
    assert torch.equal(policy.logprobs(task, prompt_idx, completions)[0].detach(),
                       frozen.logprobs(task, prompt_idx, completions)[0])


def test_node_ids_by_the_recurrence():
    task = make_task("copy", alphabet="abc", n=2, max_new_tokens=6)
    policy = TabularPolicy.for_task(task)
    V = task.vocab_size
    completions = torch.randint(0, V + 1, (2, 7, 6), generator=torch.Generator().manual_seed(0))
    index = torch.zeros(2, 7, dtype=torch.long)
    for t in range(6):
        assert torch.equal(policy.node_ids(completions)[..., t], sum(V**d for d in range(t)) + index)
        index = index * V + completions[..., t].clamp(max=V - 1)


def _generate_reference(policy, task, prompt_idx, group_size, seed, prefix=None, max_new_tokens=None,
                        min_new_tokens=None):
    """What TinyGPT2Policy.sample did before it had a sampling loop of its own: ``model.generate``."""
    from transformers import GenerationConfig

    from companion.policies import _fill_after_eos

    T = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
    rng_seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    prompts = task.prompts[prompt_idx[0]]
    k = 0 if prefix is None else prefix.shape[-1]
    inputs = prompts if prefix is None else torch.cat([prompts, prefix[0]], dim=1)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T - k,
                              min_new_tokens=max(m - k, 0), num_return_sequences=group_size,
                              pad_token_id=policy.pad_id, eos_token_id=policy.eos_id,
                              suppress_tokens=policy._extra_token_ids())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        out = policy.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    tokens = out[:, prompts.shape[1]:]
    tokens = tokens.masked_fill(tokens == policy.pad_id, policy.eos_id)
    tokens = torch.nn.functional.pad(tokens, (0, T - tokens.shape[1]), value=policy.eos_id)
    return _fill_after_eos(tokens, policy.eos_id).unsqueeze(0)


@pytest.mark.parametrize(("name", "options", "sample_options"), [
    ("pick", {}, {}), ("pick", {"max_new_tokens": 16, "min_new_tokens": 16}, {}), ("copy", {"n": 3}, {}),
    ("pick", {"template": "##", "template_mode": "shared"}, {"max_new_tokens": 2, "min_new_tokens": 2}),
    ("pick", {"max_new_tokens": 10}, {"min_new_tokens": 0}),
])
def test_the_gpt2_sampler_draws_what_generate_draws(name, options, sample_options):
    task = make_task(name, **options)
    policy = TinyGPT2Policy.for_task(task, seed=3)
    for seed in range(4):
        prompt_idx = task.sample_prompts(3, torch.Generator().manual_seed(50 + seed)).unsqueeze(0)
        ours = policy.sample(task, prompt_idx, 4, [torch.Generator().manual_seed(seed)], **sample_options)
        theirs = _generate_reference(policy, task, prompt_idx, 4, seed, **sample_options)
        assert torch.equal(ours, theirs), (name, seed)
    prefix = torch.tensor([[[task.vocab.index("#")] * 2] * 3]) if "template" in options else None
    if prefix is not None:
        ours = policy.sample(task, prompt_idx, 4, [torch.Generator().manual_seed(9)], prefix=prefix)
        assert torch.equal(ours, _generate_reference(policy, task, prompt_idx, 4, 9, prefix=prefix))


def test_a_query_larger_than_the_table_reads_it_without_gradients():
    """An exact expectation enumerates every completion: under no_grad the table path answers (more rows
    queried than the table has), with the numbers of the gathered path."""
    task = make_task("add", base=3, length="short")
    policy = TabularPolicy.for_task(task, num_seeds=2, init_scale=2.0, seed=1)
    seqs = policy.sequences(task)
    prompt_idx = torch.arange(task.num_prompts).repeat_interleave(len(seqs)).expand(2, -1)
    completions = seqs.repeat(task.num_prompts, 1).expand(2, -1, -1)
    logp, entropy = policy.logprobs(task, prompt_idx, completions)
    assert logp.requires_grad and policy._frozen_table is None
    with torch.no_grad():
        table_logp, table_entropy = policy.logprobs(task, prompt_idx, completions)
        assert policy._frozen_table is not None
        small = policy.logprobs(task, prompt_idx[:, :3], completions[:, :3])[0]
    assert torch.equal(logp.detach(), table_logp) and torch.equal(entropy, table_entropy)
    assert torch.equal(small, table_logp[:, :3])
