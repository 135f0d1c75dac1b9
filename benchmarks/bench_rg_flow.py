"""Benchmark chapter 2 (geobook.rg_flow): the kernel / vertex recursions and the Monte Carlo sampler.

Side by side in one run:
  * recursions: geobook's vectorised Gauss–Hermite (refined n vs 2n by default) / closed-form layer against
    scipy.integrate.quad (adaptive quadrature, one Gaussian average at a time), per layer: one flow at the critical point
    (K → 0, where few nodes suffice) and one at a non-critical point (1.5, 0.1), each refined and with a fixed 64-node
    rule; and per (C_b, C_W) flow of a phase-diagram grid, with the same fixed rule and refined, so that the gain of
    batching (one flow vs the grid, both 64 nodes) and the cost of refinement (grid refined vs 64 nodes) are separate;
  * criticality of GELU and swish (refined quadrature, bisection) against scipy.optimize.brentq on scipy.integrate.quad
    averages, with the largest relative difference of (K*, C_b, C_W);
  * the correlation length (one point refined; a 16 x 41 grid with a fixed 64-node rule) and the two-input vertex;
  * sampler: geobook's metric sampler (z^{l+1} | z^l ~ N(0, Ĝ), no weights) against drawing the weights explicitly with
    batched torch matmuls (`method='weights'`, the straightforward way), in networks per second at width 16, depth 8,
    with one torch thread and with torch's default thread count.

    python benchmarks/bench_rg_flow.py --quick   # a few minutes on 2 cores; writes benchmarks/results/rg_flow.json
"""
from __future__ import annotations
import argparse, math, os, sys
os.environ.setdefault('GEOBOOK_NO_PROGRESS', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from scipy import integrate, optimize
from scipy.special import expit, ndtr
from _bench import measure, write_results
from geobook.rg_flow import (kernel_flow, four_point_vertex, sample_preactivations, criticality, correlation_length,
                             input_kernel)


def scipy_tanh_flow(C_W, C_b, K0, depth):
    "Reference: K^{l+1} = C_b + C_W ∫ tanh(√K ξ)² φ(ξ) dξ by scipy's adaptive quadrature, one layer at a time."
    K, out = K0, [K0]
    for _ in range(depth - 1):
        val, _ = integrate.quad(lambda t: math.tanh(math.sqrt(K) * t)**2 * math.exp(-t * t / 2) / math.sqrt(2 * math.pi),
                                -np.inf, np.inf)
        K = C_b + C_W * val; out.append(K)
    return np.array(out)


def gauss_quad(f, K):
    "⟨f⟩_K by scipy.integrate.quad in standardised units, split at 0."
    s = math.sqrt(K)
    return sum(integrate.quad(lambda t: f(s * t) * math.exp(-t * t / 2) / math.sqrt(2 * math.pi), a, b,
                              epsabs=1e-15, epsrel=1e-13, limit=200)[0] for a, b in ((-np.inf, 0), (0, np.inf)))


_PHI = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
SCIPY_ACTS = {   # σ, σ', σ''
    'gelu': (lambda z: z * ndtr(z), lambda z: ndtr(z) + z * _PHI(z), lambda z: _PHI(z) * (2 - z * z)),
    'swish': (lambda z: z * expit(z), lambda z: expit(z) * (1 + z * (1 - expit(z))),
              lambda z: expit(z) * (1 - expit(z)) * (2 + z * (1 - 2 * expit(z))))}


def scipy_criticality(key):
    "Reference: K* from brentq on ⟨σσ''⟩_K = 0 with quad averages; then C_W = 1/⟨σ'²⟩, C_b = K* − C_W⟨σ²⟩."
    s, ds, d2s = SCIPY_ACTS[key]
    K = optimize.brentq(lambda K: gauss_quad(lambda z: s(z) * d2s(z), K), 1.0, 30.0, xtol=1e-13, rtol=1e-14)
    C_W = 1 / gauss_quad(lambda z: ds(z)**2, K)
    return K, K - C_W * gauss_quad(lambda z: s(z)**2, K), C_W


def main(quick: bool):
    rows = []
    def report(row):
        rows.append(row)
        extra = f" | reference {row['ref_median_s'] * 1e3:9.3f} ms, ratio {row['speedup']:7.1f}x" if 'ref_median_s' in row else ''
        print(f"{row['name']:<48} {row['median_s'] * 1e3:9.3f} ms{extra}", flush=True)

    # --- recursions, one flow ----------------------------------------------------------------------------------
    depth = 200
    g = measure(lambda: kernel_flow('tanh', 1.0, 0.0, 1.0, depth), repeats=5)
    r = measure(lambda: scipy_tanh_flow(1.0, 0.0, 1.0, depth), repeats=3 if quick else 5)
    err = float(np.abs(kernel_flow('tanh', 1.0, 0.0, 1.0, depth).numpy() - scipy_tanh_flow(1.0, 0.0, 1.0, depth)).max())
    report(dict(name='kernel_flow tanh, 1 flow, per layer', median_s=g['median_s'], ref_median_s=r['median_s'],
                reference='scipy.integrate.quad',
                speedup=r['median_s'] / g['median_s'], us_per_layer=g['median_s'] / depth * 1e6,
                ref_us_per_layer=r['median_s'] / depth * 1e6, max_abs_diff=err, depth=depth, peak_mb=g['peak_mb']))
    for n_pts, label in ((None, 'refined'), (64, '64 nodes')):
        g = measure(lambda: kernel_flow('tanh', 1.5, 0.1, 1.0, depth, n_points=n_pts), repeats=5)
        r = measure(lambda: scipy_tanh_flow(1.5, 0.1, 1.0, depth), repeats=3 if quick else 5)
        err = float(np.abs(kernel_flow('tanh', 1.5, 0.1, torch.tensor(1.0, dtype=torch.float64), depth, n_points=n_pts).numpy()
                           - scipy_tanh_flow(1.5, 0.1, 1.0, depth)).max())
        report(dict(name=f'kernel_flow tanh (1.5, 0.1), 1 flow, {label}', median_s=g['median_s'], ref_median_s=r['median_s'],
                    reference='scipy.integrate.quad', speedup=r['median_s'] / g['median_s'],
                    us_per_layer=g['median_s'] / depth * 1e6, ref_us_per_layer=r['median_s'] / depth * 1e6,
                    max_abs_diff=err, depth=depth, peak_mb=g['peak_mb']))
    g = measure(lambda: kernel_flow('relu', 2.0, 0.0, 1.0, depth), repeats=5)
    report(dict(name='kernel_flow relu (closed form), 1 flow', median_s=g['median_s'], us_per_layer=g['median_s'] / depth * 1e6,
                depth=depth, peak_mb=g['peak_mb']))
    g = measure(lambda: four_point_vertex('tanh', 1.0, 0.0, 1.0, depth), repeats=5)
    report(dict(name='four_point_vertex tanh, 1 flow', median_s=g['median_s'], us_per_layer=g['median_s'] / depth * 1e6,
                depth=depth, peak_mb=g['peak_mb']))
    K2 = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    g = measure(lambda: kernel_flow('tanh', 1.0, 0.0, K2, 50), repeats=5)
    report(dict(name='kernel_flow tanh, two inputs (2x2), 1 flow', median_s=g['median_s'], us_per_layer=g['median_s'] / 50 * 1e6,
                depth=50, peak_mb=g['peak_mb']))

    # --- recursions, a phase-diagram grid ------------------------------------------------------------------------
    n_grid, depth_g = (50, 100) if quick else (100, 300)
    CB, CW = torch.meshgrid(torch.linspace(0, 0.3, n_grid, dtype=torch.float64),
                            torch.linspace(0.5, 3, n_grid, dtype=torch.float64), indexing='ij')
    g = measure(lambda: kernel_flow('tanh', CW, CB, 1.0, depth_g, n_points=64), repeats=3)
    sub = 10                                   # scipy on a few grid points; its cost is per flow-layer
    r = measure(lambda: [scipy_tanh_flow(float(CW.flatten()[i]), float(CB.flatten()[i]), 1.0, 20) for i in range(sub)], repeats=3)
    flows = CB.numel()
    report(dict(name=f'kernel_flow tanh, {n_grid}x{n_grid} grid, 64 nodes', median_s=g['median_s'], reference='scipy.integrate.quad',
                us_per_flow_layer=g['median_s'] / (flows * depth_g) * 1e6, ref_us_per_flow_layer=r['median_s'] / (sub * 19) * 1e6,
                ref_median_s=r['median_s'] / (sub * 19) * flows * depth_g, speedup=(r['median_s'] / (sub * 19)) / (g['median_s'] / (flows * depth_g)),
                us_per_layer=g['median_s'] / depth_g * 1e6, flows=flows, depth=depth_g, peak_mb=g['peak_mb'],
                note='reference time extrapolated from 10 flows x 19 layers'))
    g = measure(lambda: kernel_flow('tanh', CW, CB, 1.0, depth_g), repeats=1)            # slow: one timed run
    report(dict(name=f'kernel_flow tanh, {n_grid}x{n_grid} grid, refined', median_s=g['median_s'],
                us_per_flow_layer=g['median_s'] / (flows * depth_g) * 1e6, us_per_layer=g['median_s'] / depth_g * 1e6,
                flows=flows, depth=depth_g, peak_mb=g['peak_mb'],
                note='refined until 2n and n nodes agree for every flow of the grid at once'))
    g = measure(lambda: kernel_flow('tanh', 1.5, 0.1, 1.0, depth_g, n_points=64), repeats=5)
    report(dict(name=f'kernel_flow tanh (1.5, 0.1), 1 flow of {depth_g} layers, 64 nodes', median_s=g['median_s'],
                us_per_layer=g['median_s'] / depth_g * 1e6, depth=depth_g, peak_mb=g['peak_mb'],
                note='the grid rows divided by this: the gain of batching alone'))

    # --- criticality, correlation length, two-input vertex ------------------------------------------------------
    import warnings
    warnings.filterwarnings('ignore', category=integrate.IntegrationWarning)
    for key in ('gelu', 'swish'):
        g = measure(lambda: criticality(key), repeats=3)
        r = measure(lambda: scipy_criticality(key), repeats=3)
        c, ref = criticality(key), scipy_criticality(key)
        diff = max(abs(a / b - 1) for a, b in zip((c.K_star, c.C_b, c.C_W), ref))
        report(dict(name=f'criticality {key}', median_s=g['median_s'], ref_median_s=r['median_s'],
                    reference='scipy.optimize.brentq on scipy.integrate.quad', speedup=r['median_s'] / g['median_s'],
                    max_rel_diff=diff, peak_mb=g['peak_mb']))
    g = measure(lambda: correlation_length('tanh', 3.0, 0.05), repeats=3)
    report(dict(name='correlation_length tanh, one chaotic point', median_s=g['median_s'], peak_mb=g['peak_mb']))
    CBx, CWx = torch.meshgrid(torch.linspace(0.01, 0.3, 16, dtype=torch.float64),
                              torch.linspace(0.5, 3.0, 41, dtype=torch.float64), indexing='ij')
    g = measure(lambda: correlation_length('tanh', CWx, CBx, n_points=64), repeats=2 if quick else 3)
    report(dict(name='correlation_length tanh, 16x41 grid (64 nodes)', median_s=g['median_s'], points=CBx.numel(),
                peak_mb=g['peak_mb']))
    X2 = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64) * math.sqrt(3)
    K2 = input_kernel(X2, 1.0, 0.0)
    g = measure(lambda: four_point_vertex('tanh', 1.0, 0.0, K2, 6), repeats=3)
    report(dict(name='four_point_vertex tanh, two inputs, depth 6', median_s=g['median_s'], us_per_layer=g['median_s'] / 5 * 1e6,
                depth=6, peak_mb=g['peak_mb']))

    # --- sampler ----------------------------------------------------------------------------------------------
    n_nets = 200_000 if quick else 1_000_000
    ws, x = [16] * 9, torch.ones(16)
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        g = measure(lambda: sample_preactivations(ws, 'tanh', 1.0, 0.0, x, n_nets, seed=0, keep='last'), repeats=3)
        n_ref = n_nets // 10
        r = measure(lambda: sample_preactivations(ws, 'tanh', 1.0, 0.0, x, n_ref, seed=0, keep='last', method='weights'), repeats=3)
        nps, ref_nps = n_nets / g['median_s'], n_ref / r['median_s']
        report(dict(name=f'sampler width 16 depth 8, {threads} thread(s)', median_s=g['median_s'], networks=n_nets,
                    reference='explicit weights (batched torch matmul)',
                    networks_per_s=nps, ref_networks_per_s=ref_nps, ref_median_s=n_nets / ref_nps, speedup=nps / ref_nps,
                    threads=threads, peak_mb=g['peak_mb'],
                    note='reference: explicit weights, timed on networks/10; width-16 tensor ops are small, so extra '
                         'threads add synchronisation and may be slower than one'))
    torch.set_num_threads(default_threads)
    write_results('rg_flow', rows, packages=('torch', 'numpy', 'scipy', 'geobook'), quick=quick)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='smaller sizes, finishes in a few minutes')
    main(ap.parse_args().quick)
