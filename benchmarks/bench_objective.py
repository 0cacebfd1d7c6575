"""Objective benchmark: ``Objective.loss`` vs a minimal hand-written loss of the same method. Prints
`name value unit`.

Batch: N = 64 completions, T = 512 tokens, fp32, ragged lengths (mask), advantages given (N,). For GRPO
(TRL's loss_type="grpo": α = 1/(N|o_i|), clip 0.2), DAPO (α = 1/Σ|o|, clip 0.2/0.28) and GSPO (sequence
ratio, clip 3e-4/4e-4), the forward and backward pass of each variant is timed in turn, round after round
(interleaved, so that load on the shared machine hits both alike), on one CPU thread; medians are reported,
with ``Objective.loss`` as called by default (inputs checked) and with ``validate=False``, each divided by
the hand-written loss. Target: <= 1.1x.
"""

import statistics
import time

import torch

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


def time_once(fn, lp, *args) -> float:
    x = lp.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(x, *args).backward()
    return time.perf_counter() - start


def check_same(hand, ours, lp, *args) -> None:
    x, y = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    a, b = hand(x, *args), ours(y, *args)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-9, rtol=1e-4)


def main() -> None:
    torch.set_num_threads(1)
    lp, old, adv, mask = make_batch()
    print(f"objective_batch {N}x{T} tokens")
    for name, hand in CASES.items():
        obj = cp.Objective.preset(name)
        variants = {
            "hand": hand,
            "objective": lambda x, o, a, m, obj=obj: obj.loss(x, o, a, m).loss,
            "objective_unchecked": lambda x, o, a, m, obj=obj: obj.loss(x, o, a, m, validate=False).loss,
        }
        check_same(hand, variants["objective"], lp, old, adv, mask)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for round_index in range(WARMUP + ROUNDS):
            for variant, fn in variants.items():
                elapsed = time_once(fn, lp, old, adv, mask)
                if round_index >= WARMUP:
                    times[variant].append(elapsed)
        medians = {v: statistics.median(t) for v, t in times.items()}
        for variant, value in medians.items():
            print(f"objective_{name}_{variant}_fwd_bwd {value * 1e3:.3f} ms")
        for variant in ("objective", "objective_unchecked"):
            print(f"objective_{name}_ratio_{variant}_vs_hand {medians[variant] / medians['hand']:.3f} x")


if __name__ == "__main__":
    main()
