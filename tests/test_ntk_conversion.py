"""Chapter 1 ↔ chapter 2: the conversion table's recipe with three inputs.

`nngp_ntk(x, None, L, act, C_W, C_b)[0][i, j]` must equal chapter 2's `kernel_flow(act, C_W, C_b, K0, depth=L+1)[-1]`
at [i, j, 0, 1], where K0 stacks the 2×2 first-layer kernels `input_kernel(x[[i, j]], C_W, C_b)` of every pair into
(m, m, 2, 2); to 1e-12 relative, for closed-form (relu, erf, gelu) and quadrature (tanh) activations. Chapter 2's
`input_kernel` refuses the (m, m) shortcut for m > 2, which flowed every entry as a variance.
"""
import pytest
import torch
from geobook.ntk import nngp_ntk
from geobook.rg_flow import kernel_flow, input_kernel

DT = torch.float64
X3 = torch.tensor([[1.0, 0.5, -0.3], [0.2, 1.0, 0.4], [-0.7, 0.1, 0.9]], dtype=DT)


def pair_K0(x, C_W, C_b):
    m = len(x)
    return torch.stack([torch.stack([input_kernel(x[[i, j]], C_W, C_b) for j in range(m)]) for i in range(m)])


@pytest.mark.parametrize('act,C_W,C_b', [('relu', 2.0, 0.1), ('relu', 2.0, 0.0), ('erf', 1.5, 0.2),
                                         ('gelu', 1.7, 0.1), ('tanh', 1.2, 0.05)])
@pytest.mark.parametrize('L', [1, 3])
def test_three_inputs_through_pairs(act, C_W, C_b, L):
    K = nngp_ntk(X3, None, L, act, C_W=C_W, C_b=C_b)[0]
    flow = kernel_flow(act, C_W, C_b, pair_K0(X3, C_W, C_b), depth=L + 1)[-1]
    assert flow.shape == (3, 3, 2, 2)
    assert ((flow[..., 0, 1] - K).abs().max() / K.abs().max()).item() < 1e-12
    assert ((flow[..., 0, 0] - K.diagonal()[:, None]).abs().max() / K.abs().max()).item() < 1e-12   # [i, j, 0, 0] = K_ii


def test_three_row_shortcut_is_refused():
    with pytest.raises(ValueError, match='`x`'):
        input_kernel(X3, 2.0, 0.1)
