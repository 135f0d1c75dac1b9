"""Feature learning (chapter 6): the μTransfer learning-rate sweep through geobook against the same sweep through `mup`.

The sweep of the chapter: μP MLPs with two hidden ReLU layers on scikit-learn's bundled digits (standardised pixels,
squared loss on one-hot targets), every width × learning rate trained for the same number of minibatch SGD steps
(batches of 32) and scored by the final training loss. Three implementations, side by side, on the SAME models (the
`mup` networks get geobook's initial weights) and the SAME minibatches:
  - geobook  `lr_sweep(...)`: all learning rates of one width train together as one batched network;
  - loop     one `abc_mlp` per (width, learning rate) with `torch.optim.SGD(model.param_groups(lr))`;
  - mup      one `mup` network per (width, learning rate): nn.Linear + MuReadout, base width 1, `mup.MuSGD`.
Base width 1 makes `mup`'s μP exactly the chapter's (see the chapter); the final losses of the three are compared
(their largest relative difference is recorded).

What each side batches: `lr_sweep` batches the G learning rates of a width into one network (weights (G, out, in), one
batched matmul per layer); the two loops batch nothing beyond the minibatch. So there are two comparisons:
  - like with like, "mup loop / abc_mlp loop": the same one-network-at-a-time training, torch.optim.SGD on geobook's
    per-layer parameter groups against mup's MuSGD on nn.Linear + MuReadout: the cost of the μP implementation;
  - "abc_mlp loop / geobook lr_sweep" and "mup loop / geobook lr_sweep": what batching the sweep buys.
The timed runs are interleaved (round r runs the three in an order rotated by r) so that a change of the machine's
load hits all three alike; medians over the rounds. Peak extra memory is measured afterwards, one sweep each in a fresh
process (after the data are loaded): in the timing process, sweeps after the first reuse the pages earlier ones freed
and read as ~0 MB.
Results go to benchmarks/results/feature_learning.json, which chapter 6 reads.

    python benchmarks/bench_feature_learning.py            # widths 64..1024, 7 learning rates, 100 steps, 5 rounds
    python benchmarks/bench_feature_learning.py --quick    # widths 64..256, 3 rounds (a few minutes on a busy machine)
"""
from __future__ import annotations
import argparse, json, math, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import PeakRSS, write_results
import mup
from sklearn.datasets import load_digits
from geobook.feature_learning import abc_mlp, lr_sweep
from geobook.core import as_generator

LRS = [2.0 ** k for k in range(-8, -1)]
STEPS, BATCH, DEPTH, SEED = 100, 32, 2, 0


def digits():
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32)
    return (X - X.mean(0)) / X.std(0).clamp_min(1e-3), torch.tensor(d.target)


def plan(X, seed=SEED):
    "The model seed and minibatches lr_sweep draws from `seed` (its docstring), so the loops can replay them."
    g = as_generator(seed)
    model_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return model_seed, torch.randint(0, len(X), (STEPS, BATCH), generator=g)


def mup_net(d_in, width, k):
    layers = [torch.nn.Linear(d_in, width, bias=False), torch.nn.ReLU()]
    for _ in range(DEPTH - 1): layers += [torch.nn.Linear(width, width, bias=False), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, mup.MuReadout(width, k, bias=False))


def mup_twin(ours):
    "A `mup` network (base width 1) with the effective weights of the ABCMLP `ours`."
    twin = mup_net(ours.d_in, ours.width, ours.d_out)
    mup.set_base_shapes(twin, mup_net(ours.d_in, 1, ours.d_out), delta=mup_net(ours.d_in, 2, ours.d_out))
    with torch.no_grad():
        for lin, w, mult in zip([m for m in twin if isinstance(m, torch.nn.Linear)], ours.weights, ours.multipliers):
            lin.weight.copy_(w * mult * (lin.width_mult() if isinstance(lin, mup.MuReadout) else 1.0))
    return twin


def train_one(model, opt, X, Y, batches):
    "Minibatch SGD on (1/2B)‖f − y‖²; the final loss on all rows (inf if training diverged)."
    try:
        for rows in batches:
            opt.zero_grad()
            (0.5 * ((model(X[rows]) - Y[rows]) ** 2).sum(-1).mean()).backward()
            opt.step()
        with torch.no_grad(): final = (0.5 * ((model(X) - Y) ** 2).sum(-1).mean()).item()
    except OverflowError: return math.inf                  # geobook's forward refuses to return an overflowed output
    return final if math.isfinite(final) else math.inf


def loop_sweep(X, y, widths, kind):
    "The sweep one network at a time: kind 'loop' (abc_mlp + torch.optim.SGD) or 'mup' (mup + MuSGD)."
    model_seed, batches = plan(X)
    Y = torch.nn.functional.one_hot(y, 10).to(X.dtype)
    out = np.zeros((len(widths), len(LRS)))
    for i, n in enumerate(widths):
        for j, lr in enumerate(LRS):
            ours = abc_mlp(X.shape[1], n, DEPTH, 10, 'mup', seed=model_seed)
            if kind == 'loop': model, opt = ours, torch.optim.SGD(ours.param_groups(lr))
            else: model = mup_twin(ours); opt = mup.MuSGD(model.parameters(), lr=lr)
            out[i, j] = train_one(model, opt, X, Y, batches)
    return out


def geobook_sweep(X, y, widths):
    return lr_sweep(X, y, widths, LRS, depth=DEPTH, parameterization='mup', steps=STEPS, batch_size=BATCH,
                    seed=SEED, show_progress=False)['loss'].numpy().astype(np.float64)


def rel_gap(a, b):
    "Largest relative difference of two loss grids where both trained; and whether they agree on which diverged."
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]))), bool((np.isfinite(a) == np.isfinite(b)).all())


def sweeps(X, y, widths):
    "name -> a function running that implementation's whole sweep."
    return {'geobook lr_sweep': lambda: geobook_sweep(X, y, widths), 'abc_mlp loop': lambda: loop_sweep(X, y, widths, 'loop'),
            'mup loop': lambda: loop_sweep(X, y, widths, 'mup')}


def peak_in_fresh_process(name, widths, threads):
    "Peak extra resident memory (MB, method) of one sweep of `name`, run alone in a new Python process."
    out = subprocess.run([sys.executable, __file__, '--peak-of', name, '--widths', json.dumps(widths),
                          '--threads', str(threads)], capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='widths 64..256 and fewer repeats')
    ap.add_argument('--repeats', type=int, default=None, help='interleaved rounds (default 5, quick 3)')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads for all three (default 1: repeatable on a shared machine; 0 = torch default)')
    ap.add_argument('--peak-of', default=None, help=argparse.SUPPRESS)     # the child of peak_in_fresh_process
    ap.add_argument('--widths', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads > 0: torch.set_num_threads(args.threads)
    widths = [64, 128, 256] if args.quick else [64, 128, 256, 512, 1024]
    if args.peak_of:
        X, y = digits()
        with PeakRSS() as pk: sweeps(X, y, json.loads(args.widths))[args.peak_of]()
        print(json.dumps([pk.peak_mb, pk.method])); return
    repeats = args.repeats or (3 if args.quick else 5)
    X, y = digits()
    losses = {'geobook lr_sweep': geobook_sweep(X, y, widths), 'abc_mlp loop': loop_sweep(X, y, widths, 'loop'),
              'mup loop': loop_sweep(X, y, widths, 'mup')}
    agreement = {k: rel_gap(v, losses['mup loop']) for k, v in losses.items() if k != 'mup loop'}
    for k, (gap, same) in agreement.items():
        print(f"{k} vs mup: largest relative difference of the final losses {gap:.2e}; same runs diverged: {same}")
    fns = sweeps(X, y, widths)
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats):                                   # interleaved: A B C, B C A, C A B, ...
        for name in names[r % 3:] + names[:r % 3]:
            t0 = time.perf_counter(); fns[name](); times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{repeats}: " + ', '.join(f'{k} {v[-1]:.2f} s' for k, v in times.items()), flush=True)
    rows = []
    for name, fn in fns.items():
        peak_mb, peak_method = peak_in_fresh_process(name, widths, args.threads)
        ts = times[name]
        rows.append({'implementation': name, 'widths': widths, 'n_lrs': len(LRS), 'steps': STEPS, 'batch_size': BATCH,
                     'batched': name == 'geobook lr_sweep',
                     'median_s': float(np.median(ts)), 'min_s': min(ts), 'runs': ts, 'peak_mb': peak_mb,
                     'peak_method': f'{peak_method}, one sweep in a fresh process',
                     'max_rel_loss_diff_vs_mup': None if name == 'mup loop' else agreement[name][0],
                     'same_divergence_as_mup': None if name == 'mup loop' else agreement[name][1]})
        print(f"{name:18s} median {rows[-1]['median_s']:7.2f} s  (runs {', '.join(f'{r:.2f}' for r in ts)}; "
              f"peak +{peak_mb:.0f} MB)", flush=True)
    t = {r['implementation']: r['median_s'] for r in rows}
    ratios = {'mup_over_geobook': t['mup loop'] / t['geobook lr_sweep'], 'loop_over_geobook': t['abc_mlp loop'] / t['geobook lr_sweep'],
              'mup_over_loop': t['mup loop'] / t['abc_mlp loop']}
    # per-round ratios (each round runs all three under nearly the same load): their spread says how far to trust the medians
    per_round = {k: [a / b for a, b in zip(times[num], times[den])] for k, (num, den) in
                 {'mup_over_geobook': ('mup loop', 'geobook lr_sweep'), 'loop_over_geobook': ('abc_mlp loop', 'geobook lr_sweep'),
                  'mup_over_loop': ('mup loop', 'abc_mlp loop')}.items()}
    print('; '.join(f"{k} = {v:.2f} (per round {min(per_round[k]):.2f}..{max(per_round[k]):.2f})" for k, v in ratios.items()))
    write_results('feature_learning', rows, packages=('torch', 'numpy', 'mup', 'geobook'), quick=args.quick,
                  threads={'torch': torch.get_num_threads()}, lrs=LRS, ratios=ratios, ratios_per_round=per_round,
                  timing='interleaved rounds (order rotated each round), medians over rounds',
                  losses={k: [[x if math.isfinite(x) else None for x in row] for row in v.tolist()] for k, v in losses.items()},
                  note='same μP models (mup networks carry geobook\'s initial weights; base width 1), same minibatches, '
                       'same steps; times are medians of whole sweeps over interleaved rounds; peak_mb is the extra resident memory of one sweep in a fresh process. '
                       'lr_sweep batches the learning rates of a width into one network; the two loops train one network at a time. '
                       'Losses are float32, so the three agree to rounding amplified by 100 steps, not bit for bit; null = diverged.')


if __name__ == '__main__':
    main()
