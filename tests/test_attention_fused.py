"""Chapter 5's fused CPU backward (`_flash_bwd_fused_cpu`: dK, dV and dQ in one pass per batch·head) against the two
kernels it replaces (`_flash_bwd_dkdv_cpu` + `_flash_bwd_dq_cpu`): the same bits on ragged, causal and offset shapes at
one and two threads, every dQ entry written, the public function's gradients unchanged whichever `_fuse_backward`
picks, and NaN gradients for a poisoned batch·head when inputs are not validated (a referee's findings, 2026-12-01)."""
import numpy as np
import numba
import pytest
import torch

import geobook.attention as A
from geobook.attention import flash_attention


def _stats(q, k, v, causal, off, scale):
    "The forward's O and row statistics (m, log₂ ℓ), as the backward kernels read them."
    BH, Nq, _ = q.shape
    o, ml = np.empty_like(q), np.empty((2, BH, Nq), np.float32)
    A._on_threads(A._flash_fwd_cpu, q, k, v, np.float32(scale), causal, off, o, ml[0], ml[1])
    return o, ml


def _backward(q, k, v, do, causal, off, fused, threads):
    """dQ, dK, dV by the fused kernel or by the two kernels, on `threads` workers, outputs prefilled with NaN (so an
    entry a kernel forgets to write shows)."""
    prev = numba.get_num_threads(); numba.set_num_threads(threads)
    try:
        scale = 1 / np.sqrt(q.shape[-1])
        o, ml = _stats(q, k, v, causal, off, scale)
        delta = (do * o).sum(-1).astype(np.float32)
        dq, dk, dv = (np.full_like(t, np.nan) for t in (q, k, v))
        args = (q, k, v, do, ml[0], ml[1], delta, np.float32(scale), causal, off)
        if fused: A._on_threads(A._flash_bwd_fused_cpu, *args, dk, dv, dq)
        else:
            A._on_threads(A._flash_bwd_dkdv_cpu, *args, dk, dv)
            A._on_threads(A._flash_bwd_dq_cpu, *args, dq)
        return dq, dk, dv
    finally: numba.set_num_threads(prev)


def _cases(seed=0, count=40):
    "Random (BH, Nq, Nk, D, causal): sizes around the tiles (4, 128, 256) and tiny ones, D not a multiple of 4."
    rng = np.random.default_rng(seed)
    Ns, Ds = [1, 2, 3, 5, 7, 128, 129, 255, 257, 300, 513], [1, 3, 5, 16, 33, 64]
    return [(int(rng.integers(1, 6)), int(rng.choice(Ns)), int(rng.choice(Ns)), int(rng.choice(Ds)), bool(rng.integers(0, 2)))
            for _ in range(count)]


@pytest.mark.parametrize('BH,Nq,Nk,D,causal', _cases())
def test_fused_backward_has_the_two_kernels_bits(BH, Nq, Nk, D, causal):
    rng = np.random.default_rng(BH * 7919 + Nq * 31 + Nk + D)
    q, k = (2 * rng.standard_normal((BH, n, D)).astype(np.float32) for n in (Nq, Nk))
    v, do = (rng.standard_normal((BH, n, D)).astype(np.float32) for n in (Nk, Nq))
    off = Nk - Nq if causal else 0                               # bottom-right aligned, as flash_attention calls them
    ref = _backward(q, k, v, do, causal, off, fused=False, threads=1)
    assert all(np.isfinite(t).all() for t in ref)
    for fused, threads in ((False, 2), (True, 1), (True, 2)):
        got = _backward(q, k, v, do, causal, off, fused, threads)
        for name, a, b in zip(('dq', 'dk', 'dv'), ref, got):
            assert np.array_equal(a, b), (name, fused, threads)  # NaN-prefilled: every entry written, bit for bit


def test_fuse_backward_rule():
    "Fused where the heads divide evenly among the threads or number at least four per thread."
    assert [A._fuse_backward(bh, 2) for bh in (1, 2, 3, 4, 5, 7, 8)] == [False, True, False, True, False, False, True]
    assert A._fuse_backward(1, 1) and A._fuse_backward(33, 8) and not A._fuse_backward(31, 8)


@pytest.mark.parametrize('H,Nq,Nk,causal', [(1, 257, 129, True), (3, 129, 257, True), (5, 64, 64, False), (2, 300, 1, True)])
def test_public_gradients_do_not_depend_on_the_choice(monkeypatch, H, Nq, Nk, causal):
    g = torch.Generator().manual_seed(H + Nq)
    q, k, v = (torch.randn(2, H, n, 24, generator=g) for n in (Nq, Nk, Nk))
    do = torch.randn(2, H, Nq, 24, generator=g)
    grads = []
    for fuse in (True, False):
        monkeypatch.setattr(A, '_fuse_backward', lambda BH, threads, fuse=fuse: fuse)
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        flash_attention(qq, kk, vv, causal=causal, backend='cpu').backward(do)
        grads.append([t.grad for t in (qq, kk, vv)])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    # against float64 (the plain formula, bottom-right causal mask), to float32 accuracy
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    s = q64 @ k64.transpose(-1, -2) / 24 ** 0.5
    if causal:
        keep = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)
        s = s.masked_fill(~keep, float('-inf'))
    p = torch.softmax(s, -1).nan_to_num(0.0)                     # rows with no key: O = 0
    (p @ v64).backward(do.double())
    for a, ref in zip(grads[0], (q64.grad, k64.grad, v64.grad)):
        assert (a.double() - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_unvalidated_nan_poisons_its_heads_gradients():
    "validate_inputs=False: a NaN in one batch·head's q makes that head's dq, dk, dv NaN; finite heads keep their bits."
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g) for _ in range(3))
    q_bad = q.clone(); q_bad[0, 1, 5, 2] = float('nan')
    runs = []
    for qi, validate in ((q_bad, False), (q, True), (q, False)):
        qq, kk, vv = (t.clone().requires_grad_() for t in (qi, k, v))
        flash_attention(qq, kk, vv, backend='cpu', validate_inputs=validate).sum().backward()
        runs.append([t.grad for t in (qq, kk, vv)])
    for bad, checked, unchecked in zip(*runs):
        assert torch.isnan(bad[0, 1]).all()
        finite = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]
        assert all(torch.equal(bad[b, h], checked[b, h]) for b, h in finite)    # the other heads: bit for bit
        assert torch.equal(checked, unchecked)                                  # finite inputs: the same either way


# ---------------------------------------------------------------------------------------------------------------------
# the same bits whether a kernel is compiled or loaded from Numba's cache, and the 8-lane vectors of a CPU without
# AVX-512 (a referee's point on the SIMD micro-kernels: the kernels' bits must not depend on how they were obtained)
_RUN = r'''
import sys, numpy as np, torch
import geobook.attention as A
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 3, n, 40, generator=g, requires_grad=True) for n in (300, 257, 257))
o = A.flash_attention(q, k, v, causal=True, backend='cpu'); o.square().sum().backward()
np.save(sys.argv[1], np.concatenate([t.detach().numpy().ravel() for t in (o, q.grad, k.grad, v.grad)]))
hits = sum(sum(f.stats.cache_hits.values()) for f in (A._flash_fwd_cpu, A._flash_bwd_fused_cpu, A._flash_bwd_dq_cpu,
                                                    A._flash_bwd_dkdv_cpu))
print(A._W, hits)
'''


def _run(tmp_path, name, **env):
    import os, subprocess, sys
    script = tmp_path / 'run.py'; script.write_text(_RUN)
    out = tmp_path / f'{name}.npy'
    res = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, 'NUMBA_CACHE_DIR': str(tmp_path / 'cache'), **env})
    assert res.returncode == 0, res.stderr[-2000:]
    width, hits = map(int, res.stdout.split()[-2:])
    return np.load(out), width, hits


def test_cached_kernels_give_the_compiled_bits(tmp_path):
    fresh, _, hits0 = _run(tmp_path, 'fresh')                   # compiles, writes the cache
    cached, _, hits1 = _run(tmp_path, 'cached')                 # loads from it
    assert hits0 == 0 and hits1 >= 2                            # forward and fused backward were loaded the second time
    assert np.array_equal(fresh, cached)


def _float64_reference():
    "O, dQ, dK, dV of the _RUN case in float64 (plain formula, bottom-right causal mask), flattened as _RUN saves them."
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 40, generator=g).double().requires_grad_() for n in (300, 257, 257))
    s = q @ k.transpose(-1, -2) / 40 ** 0.5
    keep = torch.arange(257)[None, :] <= torch.arange(300)[:, None] + (257 - 300)
    o = (torch.softmax(s.masked_fill(~keep, float('-inf')), -1).nan_to_num(0.0) @ v)
    o.square().sum().backward()
    return np.concatenate([t.detach().numpy().ravel() for t in (o, q.grad, k.grad, v.grad)])


@pytest.mark.skipif(__import__('platform').machine() not in ('x86_64', 'AMD64'), reason='x86 target names')
def test_eight_lane_vectors(tmp_path):
    """NUMBA_CPU_NAME=haswell (AVX2, no AVX-512): W = 8 lanes; both widths within float32 accuracy of float64, the
    worst-case relative tolerance of tests/test_attention_precision.py, (2N_k + N_q + D + 16)u with N_k = 257,
    N_q = 300, D = 40, u = 2⁻²⁴, taken against the largest entry of each output."""
    ref64, tol = _float64_reference(), (2 * 257 + 300 + 40 + 16) * 2.0 ** -24
    n = 2 * 3 * 300 * 40
    sizes = [n, n, 2 * 3 * 257 * 40, 2 * 3 * 257 * 40]
    for name, env in (('host', {}), ('haswell', {'NUMBA_CPU_NAME': 'haswell'})):
        got, w, _ = _run(tmp_path, name, **env)
        assert w == (8 if name == 'haswell' else A._W)
        for part, r in zip(np.split(got, np.cumsum(sizes)[:-1]), np.split(ref64, np.cumsum(sizes)[:-1])):
            err = np.abs(part - r).max() / np.abs(r).max()
            assert err <= tol, (name, err, tol)


def test_fused_backward_with_ragged_rows_does_not_write_past_its_buffer(tmp_path):
    """A referee's blocker: the fused backward's dQ buffer had N_q rows while `_accumulate` writes whole groups of four,
    so N_q ≢ 0 (mod 4) wrote past it (valgrind: invalid write; with D = 300 the buffer is mmap-allocated and the
    process died with SIGSEGV in 5 of 5 runs). Now it has ⌈N_q/4⌉·4 rows: the same calls, in a child process, exit
    cleanly with gradients equal to the two-kernel path's."""
    import subprocess, sys
    code = (
        "import torch, geobook.attention as A\n"
        "for nq, nk, D in ((258, 259, 300), (261, 262, 128), (257, 300, 300)):\n"
        "    g = torch.Generator().manual_seed(nq)\n"
        "    q, k, v = (torch.randn(1, 2, n, D, generator=g).requires_grad_() for n in (nq, nk, nk))\n"
        "    grads = []\n"
        "    for fuse in (True, False):\n"
        "        A._fuse_backward = lambda BH, threads, fuse=fuse: fuse\n"
        "        for t in (q, k, v): t.grad = None\n"
        "        A.flash_attention(q, k, v, backend='cpu').square().sum().backward()\n"
        "        grads.append([t.grad.clone() for t in (q, k, v)])\n"
        "    assert all(torch.equal(a, b) for a, b in zip(*grads)), nq\n"
        "print('ok')\n")
    for _ in range(3):
        p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0 and p.stdout.strip() == 'ok', (p.returncode, p.stderr[-2000:])
