"Third referee's findings on chapter 4 (sliced Wasserstein), each re-run as a test (float64 unless the case is about dtype)."
import math
import pytest
import torch
from geobook.sliced import (pac_sliced_bound, generalized_sliced_wasserstein, sliced_wasserstein_sphere, vmf_kl_uniform,
                            vmf_mean_resultant_length, sliced_wasserstein, SWAE)
from geobook.sliced import _sample_diameter_exceeds

F64 = torch.float64


def test_pac_diameter_checks_every_pair():
    "The referee's case: max ‖z − z₀‖ = 1 but ‖X[1] − Y[0]‖ = 2, so Δ = 1 must be refused; Δ = 2 accepted."
    X = torch.tensor([[0., 0.], [1., 0.]], dtype=F64); Y = torch.tensor([[-1., 0.], [0.5, 0.]], dtype=F64)
    mu = torch.tensor([1., 0.], dtype=F64)
    with pytest.raises(ValueError, match='diameter'):
        pac_sliced_bound(X, Y, mu, 0.0, diameter=1.0, n_projections=10, seed=0)
    assert torch.isfinite(pac_sliced_bound(X, Y, mu, 0.0, diameter=2.0, n_projections=10, seed=0).bound)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sample_diameter_is_exact(seed):
    "Against torch.cdist over all pairs: nothing reported at the true diameter, the true diameter just below it."
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(700, 4, generator=g, dtype=F64) * torch.tensor([3., 1., 0.5, 0.1], dtype=F64)
    D = float(torch.cdist(Z, Z).max())
    assert _sample_diameter_exceeds(Z, D * (1 + 1e-12)) is None
    assert _sample_diameter_exceeds(Z, D * (1 - 1e-6)) == pytest.approx(D, rel=1e-12)


def test_gsw_all_zero_clouds_is_zero():
    assert generalized_sliced_wasserstein(torch.zeros(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64), seed=0).item() == 0.0


def test_sphere_accepts_half_precision_unit_rows():
    "Unit rows rounded to float16 have norms 1 ± a few half ulps; they are accepted and agree with float32 to half precision."
    g = torch.Generator().manual_seed(0)
    U = torch.nn.functional.normalize(torch.randn(40, 4, generator=g), dim=1)
    V = torch.nn.functional.normalize(torch.randn(30, 4, generator=g) + 1, dim=1)
    h = sliced_wasserstein_sphere(U.half(), V.half(), seed=0)
    f = sliced_wasserstein_sphere(U.half().float() / U.half().float().norm(dim=1, keepdim=True),
                                  V.half().float() / V.half().float().norm(dim=1, keepdim=True), seed=0)
    assert h.dtype == torch.float16 and abs(h.item() - f.item()) < 4e-3 * f.item()


def test_vmf_half_precision_computed_in_float32():
    "κ = 5, d = 10 in float16: the float64 value 0.968514… rounded once to float16 (the referee saw 0.97168, 3 ulps off)."
    ref = vmf_kl_uniform(torch.tensor([5.], dtype=F64), 10)
    out = vmf_kl_uniform(torch.tensor([5.]).half(), 10)
    assert out.dtype == torch.float16 and out.item() == ref.half().item()
    refA = vmf_mean_resultant_length(torch.tensor([5.], dtype=F64), 10)
    assert vmf_mean_resultant_length(torch.tensor([5.]).half(), 10).item() == refA.half().item()


def test_half_precision_distance_beyond_range_raises():
    "SW between clouds at ±6e4 in float16 is about 1.2e5 > 65504: an OverflowError naming the dtype, not a silent inf."
    X, Y = torch.full((10, 3), 6e4).half(), torch.full((8, 3), -6e4).half()
    with pytest.raises(OverflowError, match='float16'):
        sliced_wasserstein(X, Y, seed=0)
    exact = 1.2e5                  # each slice moves all mass by 1.2e5·⟨θ, 1⟩, and E⟨θ, 1⟩² = ‖1‖²/d = 1
    assert sliced_wasserstein(X.float(), Y.float(), n_projections=20000, seed=0).item() == pytest.approx(exact, rel=0.03)


def test_swae_lr_overflow_names_lr():
    "Standard-normal data with lr = 1e30: the codes overflow during training, and the message names `lr`."
    with pytest.raises(OverflowError, match='lr'):
        SWAE(4, 2, hidden=4, seed=0).fit(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), lr=1e30,
                                         seed=0, show_progress=False)
