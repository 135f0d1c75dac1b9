"""Chapter 1 benchmark: geobook.ntk against neural-tangents, side by side on the same inputs and weights.

  nngp_ntk      4096 x 4096 inputs (d = 64), depth 5, ReLU, erf, GELU,   vs  neural_tangents.stax kernel_fn (jit)
                leaky ReLU (slope 0.1: geobook's LeakyReLU, neural-tangents' LeakyRelu)
  empirical_ntk width-512 MLP, 3 dense layers (depth 2), 256 x 256   vs  neural_tangents.empirical_ntk_fn (jit)
  baseline      geobook's own quadrature path (refined trapezoidal rule; erf given as a callable, and tanh) on fewer
                inputs: what an activation without a closed form costs

neural-tangents 0.6.5 needs jax[cpu]==0.4.30, which must not enter geobook's environment: install it into a separate
virtual environment and point GEOBOOK_NT_PYTHON at that environment's python, e.g.

    make bench-nt   (a venv .venv-nt from benchmarks/requirements-nt.txt; `make bench` then finds it)
    GEOBOOK_NT_PYTHON=.venv-nt/bin/python python benchmarks/bench_ntk.py

The neural-tangents side runs in a subprocess of that python; without the variable only geobook is timed.
Timings are float32 (neural-tangents' default); values are compared in float64 on a subset (kernels: largest relative
difference over all entries and over the off-diagonal ones, since neural-tangents' ReLU diagonal carries a √ε rounding
error that geobook's exact ρ = 1 does not) and in float32 on the full matrix (empirical NTK, same weights loaded into
both). `--quick` shrinks the sizes to finish in ~2 minutes.
"""
from __future__ import annotations
import argparse, json, math, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import measure, write_results
from geobook.ntk import nngp_ntk, empirical_ntk, MLP, LeakyReLU

ACTIVATIONS = {'relu': 'relu', 'erf': 'erf', 'gelu': 'gelu', 'leaky_relu': LeakyReLU(0.1)}   # case name -> geobook's

NT_SCRIPT = r'''
import json, math, sys, time
from pathlib import Path
import numpy as np
import jax
jax.config.update('jax_enable_x64', True)          # float64 for the value comparison; timings use float32 arrays
import jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
sys.path.insert(0, sys.argv[2])
from _bench import measure

tmp = Path(sys.argv[1]); cfg = json.loads((tmp / 'cfg.json').read_text())
data = np.load(tmp / 'inputs.npz')
out, rows = {}, []
sw = math.sqrt(2.0)

ACTS = {'relu': stax.Relu, 'erf': stax.Erf, 'gelu': lambda: stax.Gelu(approximate=False),
        'leaky_relu': lambda: stax.LeakyRelu(0.1)}

def kernel_fn(act, depth):
    layers = []
    for _ in range(depth): layers += [stax.Dense(1, W_std=sw, b_std=None), ACTS[act]()]
    return jax.jit(stax.serial(*layers, stax.Dense(1, W_std=sw, b_std=None))[2], static_argnames='get')

X32 = jnp.asarray(data['X'], dtype=jnp.float32)
Xc64 = jnp.asarray(data['X'][:cfg['n_check']], dtype=jnp.float64)
for act in ACTS:
    kfn = kernel_fn(act, cfg['depth'])
    print(f'[nt] kernel_fn {act} n={len(X32)}', flush=True)
    m = measure(lambda: jax.block_until_ready(kfn(X32, None, ('nngp', 'ntk'))), repeats=cfg['repeats'], warmup=1)
    rows.append({'case': f'nngp_ntk {act} depth {cfg["depth"]}', 'n': int(len(X32)), **m})
    k = kfn(Xc64, None, ('nngp', 'ntk'))
    out[f'K_{act}'], out[f'T_{act}'] = np.asarray(k.nngp), np.asarray(k.ntk)

init_fn, apply_fn, _ = stax.serial(stax.Dense(cfg['width'], W_std=sw, b_std=None), stax.Relu(),
                                   stax.Dense(cfg['width'], W_std=sw, b_std=None), stax.Relu(),
                                   stax.Dense(1, W_std=sw, b_std=None))
params = [(jnp.asarray(data['W0'].T), None), (), (jnp.asarray(data['W1'].T), None), (), (jnp.asarray(data['W2'].T), None)]
ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0))
Xe = jnp.asarray(data['Xe'], dtype=jnp.float32)
print(f'[nt] empirical_ntk_fn n={len(Xe)}', flush=True)
m = measure(lambda: jax.block_until_ready(ntk_fn(Xe, None, params)), repeats=cfg['repeats'], warmup=1)
rows.append({'case': f'empirical_ntk width {cfg["width"]}', 'n': int(len(Xe)), **m})
out['T_emp'] = np.asarray(ntk_fn(Xe, None, params))
np.savez(tmp / 'nt_out.npz', **out)
(tmp / 'nt_rows.json').write_text(json.dumps({'rows': rows, 'versions': {'jax': jax.__version__,
    'neural_tangents': getattr(nt, '__version__', None)}}))
'''


def rel_diff(a, b, offdiag: bool = False) -> float:
    "max |a − b| / max |b| over all entries, or over the off-diagonal ones."
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mask = ~np.eye(*a.shape, dtype=bool) if offdiag else np.ones(a.shape, bool)
    return float(np.abs(a - b)[mask].max() / np.abs(b).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='smaller sizes (about 2 minutes on 2 cores)')
    ap.add_argument('--threads', type=int, default=None,
                    help='CPU threads for both sides (torch.set_num_threads; XLA single-threaded when 1). '
                         'On an oversubscribed machine 1 gives far steadier timings than OpenMP spin-waiting.')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    cfg = dict(n=1024 if args.quick else 4096, n_emp=64 if args.quick else 256, n_quad=128,
               n_check=256, d=64, depth=5, width=512, repeats=5 if args.quick else 7)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((cfg['n'], cfg['d'])).astype(np.float32)
    Xe = rng.standard_normal((cfg['n_emp'], cfg['d'])).astype(np.float32)
    model = MLP(cfg['d'], cfg['width'], 2, seed=0, dtype=torch.float32)
    Xt, Xet = torch.from_numpy(X), torch.from_numpy(Xe)
    rows, values = [], {}

    for act, fn in ACTIVATIONS.items():
        print(f'[geobook] nngp_ntk {act} n={cfg["n"]}', flush=True)
        m = measure(lambda: nngp_ntk(Xt, None, cfg['depth'], fn, show_progress=False), repeats=cfg['repeats'], warmup=1)
        rows.append({'case': f'nngp_ntk {act} depth {cfg["depth"]}', 'library': 'geobook', 'n': cfg['n'], **m})
        values[act] = nngp_ntk(Xt[:cfg['n_check']].double(), None, cfg['depth'], fn)
    for act, fn in (('erf', torch.erf), ('tanh', 'tanh')):      # erf as a callable: quadrature + autograd σ'
        print(f'[geobook] quadrature baseline {act} n={cfg["n_quad"]}', flush=True)
        m = measure(lambda: nngp_ntk(Xt[:cfg['n_quad']], None, cfg['depth'], fn, show_progress=False), repeats=1, warmup=0)
        rows.append({'case': f'nngp_ntk {act} depth {cfg["depth"]}', 'library': 'geobook quadrature (refined trapezoid)',
                     'n': cfg['n_quad'], **m})
    print(f'[geobook] empirical_ntk n={cfg["n_emp"]}', flush=True)
    m = measure(lambda: empirical_ntk(model, Xet), repeats=cfg['repeats'], warmup=1)
    rows.append({'case': f'empirical_ntk width {cfg["width"]}', 'library': 'geobook', 'n': cfg['n_emp'], **m})
    values['emp'] = empirical_ntk(model, Xet)
    m = measure(lambda: empirical_ntk(model, Xet, method='ntk-vp'), repeats=1, warmup=0)
    rows.append({'case': f'empirical_ntk width {cfg["width"]}', 'library': 'geobook ntk-vp', 'n': cfg['n_emp'], **m})

    ratios, note, versions = [], None, {}
    nt_python = os.environ.get('GEOBOOK_NT_PYTHON')
    if nt_python:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / 'cfg.json').write_text(json.dumps(cfg))
            np.savez(tmp / 'inputs.npz', X=X, Xe=Xe, **{f'W{i}': w.detach().numpy() for i, w in enumerate(model.weights)})
            (tmp / 'nt_side.py').write_text(NT_SCRIPT)
            env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
            if args.threads == 1:
                env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1').strip()
            proc = subprocess.run([nt_python, str(tmp / 'nt_side.py'), str(tmp), str(Path(__file__).resolve().parent)],
                                  env=env, capture_output=True, text=True)
            print('\n'.join(l for l in proc.stdout.splitlines() if l.startswith('[nt]')))
            if proc.returncode != 0:
                note = f'neural-tangents side failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}'
                print(note)
            else:
                res = json.loads((tmp / 'nt_rows.json').read_text()); versions = res['versions']
                nt_out = np.load(tmp / 'nt_out.npz')
                diffs, offdiag = {}, {}
                for act in ACTIVATIONS:
                    K, T = values[act]
                    case = f'nngp_ntk {act} depth {cfg["depth"]}'
                    diffs[case] = max(rel_diff(K, nt_out[f'K_{act}']), rel_diff(T, nt_out[f'T_{act}']))
                    offdiag[case] = max(rel_diff(K, nt_out[f'K_{act}'], True), rel_diff(T, nt_out[f'T_{act}'], True))
                diffs[f'empirical_ntk width {cfg["width"]}'] = rel_diff(values['emp'], nt_out['T_emp'])
                # ReLU at criticality (C_W = 2, C_b = 0): on the diagonal Θ^{L+1}(x, x) = (L + 1)·2‖x‖²/n₀ exactly
                Xc = X[:cfg['n_check']].astype(np.float64)
                exact = (cfg['depth'] + 1) * 2 * (Xc * Xc).sum(1) / cfg['d']
                diag_err = {'geobook': float(np.abs(np.diag(values['relu'][1].numpy()) / exact - 1).max()),
                            'neural-tangents': float(np.abs(np.diag(nt_out['T_relu']) / exact - 1).max())}
                for r in res['rows']:
                    rows.append({**r, 'library': 'neural-tangents'})
                    g = next(x for x in rows if x['case'] == r['case'] and x['library'] == 'geobook')
                    g['max_rel_diff_vs_nt'] = diffs[r['case']]
                    if r['case'] in offdiag: g['max_rel_diff_vs_nt_offdiag'] = offdiag[r['case']]
                    if r['case'].startswith('nngp_ntk relu'):
                        g['relu_diag_rel_err_vs_exact'] = diag_err['geobook']
                        rows[-1]['relu_diag_rel_err_vs_exact'] = diag_err['neural-tangents']
                    ratios.append({'case': r['case'], 'nt_over_geobook': r['median_s'] / g['median_s'],
                                   'nt_over_geobook_min': r['min_s'] / g['min_s']})
    else:
        note = 'GEOBOOK_NT_PYTHON not set: neural-tangents side skipped (see the docstring of benchmarks/bench_ntk.py)'
        print(note)

    print(f"\n{'case':30s} {'library':30s} {'n':>5s} {'median s':>9s} {'peak MB':>8s}")
    for r in rows: print(f"{r['case']:30s} {r['library']:30s} {r['n']:5d} {r['median_s']:9.3f} {r['peak_mb']:8.0f}")
    for c in ratios: print(f"{c['case']}: neural-tangents time / geobook time = {c['nt_over_geobook']:.2f} (medians), "
                           f"{c['nt_over_geobook_min']:.2f} (best runs)")
    write_results('ntk', rows, packages=('torch', 'numpy', 'geobook'), quick=args.quick, config=cfg, ratios=ratios,
                  reference_versions=versions, note=note, torch_threads=torch.get_num_threads(),
                  threads_forced=args.threads)


if __name__ == '__main__':
    main()
