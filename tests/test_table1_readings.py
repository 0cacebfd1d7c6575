"""Two rows of Table 1 that admit two readings, and which one the presets take (book/errata.md, entry 5).

GCPO: the loss has the value of the literal row Σ_t s_i(θ) A_i/(σG), the gradient of one term per
completion, s_i(θ) A_i/(σG). CPPO: γ acts on the σ-scaled advantage, not on the centred one.
"""

import torch

import companion as cp
from companion import methods

F64 = torch.float64


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([2, 3, 4, 5, 1, 6, 3, 2])
    mask = (torch.arange(6) < lengths[:, None]).to(F64)
    old = torch.log(0.2 + 0.6 * torch.rand(8, 6, generator=gen, dtype=F64)) * mask
    new = (old + 0.01 * torch.randn(8, 6, generator=gen, dtype=F64)) * mask  # every ratio inside the clip
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    return lengths.to(F64), mask, old, new, rewards


def test_gcpo_has_the_value_of_the_literal_row_and_one_term_per_completion_as_gradient():
    lengths, mask, old, new, rewards = batch()
    gcpo = cp.Objective.preset("gcpo")
    adv = gcpo.advantages(rewards, 4)  # σ folded in, as Table 1's 1/(σ(r) G)
    n = len(rewards)

    logprobs = new.clone().requires_grad_(True)
    out = gcpo.loss(logprobs, old, adv, mask)
    (preset_grad,) = torch.autograd.grad(out.loss, logprobs)

    def sequence_ratio(lp):
        return ((lp - old) * mask).sum(1).exp()  # π_θ(o_i|x) / π_old(o_i|x), differentiable

    literal = new.clone().requires_grad_(True)  # Σ_t α s_i(θ) A_i with α = 1/(σG): |o_i| s_i A_i / N
    literal_loss = -(lengths * sequence_ratio(literal) * adv).sum() / n
    (literal_grad,) = torch.autograd.grad(literal_loss, literal)

    per_completion = new.clone().requires_grad_(True)  # one term s_i(θ) A_i / N per completion
    per_completion_loss = -(sequence_ratio(per_completion) * adv).sum() / n
    (per_completion_grad,) = torch.autograd.grad(per_completion_loss, per_completion)

    assert out.clip_fraction_low + out.clip_fraction_high == 0
    assert torch.allclose(out.loss, literal_loss, rtol=1e-12, atol=0)  # the value of the literal row
    assert torch.allclose(preset_grad, per_completion_grad, rtol=1e-12, atol=1e-15)
    assert torch.allclose(preset_grad * lengths[:, None], literal_grad, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(preset_grad, literal_grad, rtol=1e-3, atol=0)  # the readings differ


def test_cppo_threshold_acts_on_the_sigma_scaled_advantage():
    graded = torch.tensor([1.0, 0.9, 0.0, 0.0], dtype=F64)  # mean 0.475, σ = 0.55
    centred = graded - graded.mean()  # (0.525, 0.425, −0.475, −0.475)
    scaled = cp.Objective.preset("cppo").advantages(graded, 4)  # ≈ (0.95, 0.77, −0.86, −0.86)
    assert torch.allclose(scaled, centred / (graded.std() + 1e-4), rtol=1e-12)
    gamma = cp.Objective.preset("cppo").adv_threshold

    flat, ones = torch.zeros(4, 1, dtype=F64), torch.ones(4, 1, dtype=F64)
    kept = cp.Objective.preset("cppo").loss(flat, flat, scaled, ones, ref_logprobs=flat).alpha.sum(-1) > 0
    assert kept.tolist() == (scaled.abs() > gamma).tolist() == [True] * 4  # the preset: all four
    assert (centred.abs() > gamma).tolist() == [True, False, False, False]  # the centred reading: one

    row = {r["method"]: r for r in methods.table_rows()}["CPPO"]
    assert row["α_{i,t}"] == "1/(G·|o_i|·σ(r)) · 1{|A_i|/σ(r) > 0.5}"
    assert "σ-scaled" in cp.PRESETS["cppo"].notes and "1/|o_i|" in cp.PRESETS["gcpo"].notes
