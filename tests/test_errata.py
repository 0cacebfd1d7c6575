"""book/errata.md: each slip of the paper that the book relies on, and what the book computes instead.

(Eqs. 5-6 are checked in tests/test_optim.py next to the optimizer; GCPO's and CPPO's readings of Table 1
in tests/test_table1_readings.py.)
"""

import math

import pytest
import torch

import companion as cp
from companion import theory


@pytest.mark.parametrize("cls", [cp.InstrumentedAdamW, torch.optim.AdamW])
def test_errata_eq4_weight_decay_shrinks_the_parameters(cls):
    """Eq. 4 prints +ξλθ; App. C.4, Eq. 29, AdamW and torch use −ξλθ."""
    lr, decay = 0.1, 0.5
    p = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    opt = cls([p], lr=lr, weight_decay=decay)
    p.grad = torch.zeros_like(p)  # m = v = 0: the Adam part of the step is exactly 0
    opt.step()
    assert p.item() == pytest.approx(2.0 - lr * decay * 2.0, rel=1e-15)  # 1.9
    assert p.item() != pytest.approx(2.0 + lr * decay * 2.0)  # 2.1, Eq. 4 as printed


def test_errata_c_t4_is_0_671():
    """After Eq. 37 the paper prints C_{T,4} ≈ 0.923^5 ≈ 0.66; (0.9/√0.95)^5 = 0.671."""
    c_t4 = theory.c_tk_large_t(0.9, 0.95, 4)
    assert c_t4 == pytest.approx((0.9 / math.sqrt(0.95)) ** 5, rel=1e-15)
    assert round(c_t4, 3) == 0.671 and round(0.923**5, 3) == 0.670
    assert round(c_t4, 2) != 0.66


def test_errata_gspo_ratio_is_length_normalised():
    """Table 1 prints GSPO's sequence ratio without its 1/|o_i| exponent; GSPO (and the preset) has it."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 3, 6, 8])
    mask = (torch.arange(8) < lengths[:, None]).double()
    old = torch.log(0.2 + 0.6 * torch.rand(4, 8, generator=gen, dtype=torch.float64)) * mask
    new = (old + 0.05 * torch.randn(4, 8, generator=gen, dtype=torch.float64)) * mask
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    out = cp.Objective.preset("gspo").loss(new, old, adv, mask)
    sequence_ratio = ((new - old) * mask).sum(1).exp()  # π_θ(o_i|x) / π_old(o_i|x)
    normalised = sequence_ratio ** (1 / lengths.double())  # GSPO's s_i
    assert torch.allclose(out.ratio[:, 0], normalised, rtol=1e-12, atol=0)
    long = lengths > 1
    assert not torch.allclose(out.ratio[long, 0], sequence_ratio[long], rtol=1e-3, atol=0)
    gcpo = cp.Objective.preset("gcpo").loss(new, old, adv, mask)  # the ratio without the exponent
    assert torch.allclose(gcpo.ratio[:, 0], sequence_ratio, rtol=1e-12, atol=0)
