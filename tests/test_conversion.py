"""Chapter 1's `nngp_ntk` against chapter 2's `kernel_flow` through the conversion table, for more than two inputs.

The table's recipe: `kernel_flow` flows one input or one pair at a time, so m inputs flow as the batch of their pairs'
first-layer kernels `input_kernel(x[[i, j]], C_W, C_b)` (m, m, 2, 2); entry [..., 0, 1] of layer L + 1 is chapter 1's
K[i, j] at depth L. `input_kernel` refuses more than two rows, since `kernel_flow` would read an (m, m) Gram matrix as m²
separate variances (the referee's example: 0.8467 for the true 0.9346, without an error).
"""
import pytest
import torch

from geobook.ntk import nngp_ntk
from geobook.rg_flow import input_kernel, kernel_flow

DT = torch.float64
X3 = torch.tensor([[1.0, 0.5, 0.3], [0.2, 1.0, 0.4], [0.7, 0.1, 0.9]], dtype=DT)           # the referee's inputs
X5 = torch.tensor([[1.0, 0.5, -0.3, 0.0], [0.2, 1.0, 0.4, -0.5], [-0.7, 0.1, 0.9, 0.2], [0.3, -1.2, 0.5, 0.8],
                   [1.0, 0.5, -0.3, 0.0]], dtype=DT)                                          # 5 inputs, a repeated one


def pair_kernels(X, C_W, C_b):
    "K⁽¹⁾ of every pair (xᵢ, xⱼ): (m, m, 2, 2)."
    return torch.stack([torch.stack([input_kernel(X[[i, j]], C_W, C_b) for j in range(len(X))]) for i in range(len(X))])


@pytest.mark.parametrize('X', [X3, X5], ids=['3 inputs', '5 inputs'])
@pytest.mark.parametrize('key, C_W, C_b', [('relu', 2.0, 0.1), ('erf', 1.5, 0.2), ('relu', 1.3, 0.0)])
def test_table_recipe_matches_nngp_ntk(X, key, C_W, C_b):
    flow = kernel_flow(key, C_W, C_b, pair_kernels(X, C_W, C_b), depth=6)                   # layers 1..6
    assert flow.shape == (6, len(X), len(X), 2, 2)
    for L in range(1, 6):
        K = nngp_ntk(X, None, depth=L, activation=key, C_W=C_W, C_b=C_b)[0]
        assert ((flow[L][..., 0, 1] - K).abs().max() / K.abs().max()).item() < 1e-12, (key, L)
        # each pair also carries both variances: K(xᵢ, xᵢ) in [i, j, 0, 0] for every j, K(xⱼ, xⱼ) in [i, j, 1, 1]
        d = torch.diagonal(K)
        assert ((flow[L][..., 0, 0] - d[:, None]).abs().max() / d.max()).item() < 1e-12
        assert ((flow[L][..., 1, 1] - d[None, :]).abs().max() / d.max()).item() < 1e-12


def test_referee_numbers():
    "Depth 2 in chapter 1 = layer 3 here; the (0, 1) entry is 0.9346 (the Gram matrix flowed entry by entry gave 0.8467)."
    K = kernel_flow('relu', 2.0, 0.1, pair_kernels(X3, 2.0, 0.1), depth=3)[-1][..., 0, 1]
    assert abs(K[0, 1].item() - 0.9346) < 5e-5
    # the old recipe: a (3, 3) K0 is a batch of 9 variances (the documented contract), each flowed as one input's variance
    gram = pair_kernels(X3, 2.0, 0.1)[..., 0, 1]
    entrywise = kernel_flow('relu', 2.0, 0.1, gram, depth=3)[-1]
    assert abs(entrywise[0, 1].item() - kernel_flow('relu', 2.0, 0.1, gram[0, 1].item(), depth=3)[-1].item()) < 1e-15
    assert abs(entrywise[0, 1].item() - 0.8467) < 5e-5 and (entrywise - K).abs().max() / K.abs().max() > 0.04


def test_misuse_raises_naming_the_argument():
    with pytest.raises(ValueError, match='`x` has 3 rows'):
        input_kernel(X3, 2.0, 0.1)
    with pytest.raises(ValueError, match='`x` has 5 rows'):
        input_kernel(X5, 1.0, 0.0)
    gram = pair_kernels(X5, 2.0, 0.1)[..., 0, 1]                                               # (5, 5), negative entries
    assert (gram < 0).any()
    with pytest.raises(ValueError, match=r'`K0` must be > 0 \(a variance\): a K0 of shape \(5, 5\) is a batch'):
        kernel_flow('relu', 2.0, 0.1, gram, 3)
    # one input and one pair still work, and agree with the pair's entries
    assert input_kernel(X3[0], 2.0, 0.1).shape == ()
    assert input_kernel(X3[:2], 2.0, 0.1).shape == (2, 2)
    assert input_kernel(X3[:1], 2.0, 0.1).shape == (1, 1)
    assert input_kernel(X3[0], 2.0, 0.1).item() == input_kernel(X3[:2], 2.0, 0.1)[0, 0].item()
