"""Objective benchmark: ``Objective.loss`` vs a minimal hand-written loss of the same method.

Batch: N = 64 completions, T = 512 tokens, fp32, ragged lengths (mask), advantages given (N,). For GRPO
(TRL's loss_type="grpo": α = 1/(N|o_i|), clip 0.2), DAPO (α = 1/Σ|o|, clip 0.2/0.28) and GSPO (sequence
ratio, clip 3e-4/4e-4), the forward and backward pass of each variant is timed in turn, round after round
(interleaved, so that load on the shared machine hits both alike), on one CPU thread; medians are reported,
with ``Objective.loss`` as called by default (inputs checked) and with ``validate=False``, each divided by
the hand-written loss. Target: <= 1.1x.
"""

import torch
from results import Row
from timing import interleaved

import companion as cp

N, T = 64, 512
ROUNDS = 60
WARMUP = 5


def hand_grpo(lp, old, adv, mask):
    ratio = torch.exp(lp - old)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def hand_dapo(lp, old, adv, mask):
    ratio = torch.exp(lp - old)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def hand_gspo(lp, old, adv, mask):
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    seq = ((lp - old) * mask).sum(-1, keepdim=True) / lengths
    s = torch.exp(lp - lp.detach() + seq.detach())
    a = adv.unsqueeze(1)
    per_token = -torch.min(s * a, torch.clamp(s, 1 - 3e-4, 1 + 4e-4) * a)
    return ((per_token * mask).sum(-1) / lengths.squeeze(1)).mean()


CASES = {"grpo": hand_grpo, "dapo": hand_dapo, "gspo": hand_gspo}


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 4, T + 1, (N,), generator=g)
    mask = (torch.arange(T) < lengths.unsqueeze(1)).float()
    old = -3 * torch.rand(N, T, generator=g)
    lp = old + 0.1 * torch.randn(N, T, generator=g)
    adv = torch.randn(N, generator=g)
    return lp, old, adv, mask


def check_same(hand, ours, lp, *args) -> None:
    x, y = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    a, b = hand(x, *args), ours(y, *args)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-9, rtol=1e-4)


def fwd_bwd(fn, lp, *args):
    """A call that runs ``fn`` forward and backward on a leaf copy of ``lp`` (made once, gradient reset)."""
    x = lp.clone().requires_grad_(True)

    def call() -> None:
        x.grad = None
        fn(x, *args).backward()
    return call


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    lp, old, adv, mask = make_batch()
    rows = []
    for name, hand in CASES.items():
        obj = cp.Objective.preset(name)
        checked = lambda x, o, a, m, obj=obj: obj.loss(x, o, a, m).loss  # noqa: E731
        unchecked = lambda x, o, a, m, obj=obj: obj.loss(x, o, a, m, validate=False).loss  # noqa: E731
        check_same(hand, checked, lp, old, adv, mask)
        times = interleaved({v: fwd_bwd(fn, lp, old, adv, mask) for v, fn in
                             (("hand", hand), ("checked", checked), ("unchecked", unchecked))},
                            rounds=10 if quick else ROUNDS, warmup=WARMUP)
        rows.append(Row(f"objective_{name}", f"`Objective.loss` fwd+bwd, {name}, checks on (N={N}, T={T})",
                        times["checked"], times["hand"], 1.1))
        rows.append(Row(f"objective_{name}_unchecked", f"`Objective.loss` fwd+bwd, {name}, validate=False",
                        times["unchecked"], times["hand"], 1.1))
    return rows
