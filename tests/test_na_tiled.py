"""Chapter 5's tiled neighborhood attention on 2-D patches (issue 18, part 1): the host plan brute-forced against the
window functions, the pairs visited, the kernels against float64 under the CUDA simulator (tests/sim_na_tiled.py, in a
process of its own), and ptxas's facts of their GPU builds (sm_90, launch bounds: 0-byte stack, no spills, ≤ 128
registers, the predicted shared memory)."""
import json, os, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from geobook.attention import _Mask, _na_plan, _na_pairs_visited, _axis_tables, _window_py, _in_window_py

ROOT = Path(__file__).resolve().parents[1]


def _patch_points(row, dx, dy):
    "Positions (x, y) of the points of one plan row's patch."
    gx, sx, nx, _, _, gy, sy, ny, _, _ = row
    return [(gx + dx * (sx + a), gy + dy * (sy + b)) for a in range(nx) for b in range(ny)]

def _rect_points(row, dx, dy):
    "Positions (x, y) of the rectangle of one plan row."
    gx, _, _, fx, mx, gy, _, _, fy, my = row
    return [(gx + dx * (fx + a), gy + dy * (fy + b)) for a in range(mx) for b in range(my)]

def _check_tables(L, ks, dil, causal) -> None:
    """Brute force of `_axis_tables` on one axis: rows 0, 1 are `_window_py`'s window (in groups) and hold exactly the
    keys b with `_in_window_py(a, b)`; rows 2, 3 hold exactly the queries a whose window holds b (so that set is an
    interval of groups, as the plan assumes)."""
    t = _axis_tables(L, ks, dil, causal)
    for a in range(L):
        first, cnt = _window_py(a, L, ks, dil, causal)
        assert (t[0, a], t[1, a]) == (first // dil, cnt)
        keys = [b for b in range(L) if _in_window_py(a, b, L, ks, dil, causal)]
        assert keys == [a % dil + dil * (t[0, a] + u) for u in range(t[1, a])]
        queries = [c for c in range(L) if _in_window_py(c, a, L, ks, dil, causal)]
        assert queries == [a % dil + dil * (t[2, a] + u) for u in range(t[3, a])], (a, queries, t[:, a])

def _check_plan(mask, bq: int) -> dict:
    """Brute force against `_window_py` / `_in_window_py`: the tables (`_check_tables`); the patches tile the grid
    (every point once, ≤ bq per patch); each patch's rectangle holds every key (qplan) or query (kplan) paired with one
    of its points, and is tight (each of its grid rows and columns holds such a pair). Returns the patch counts."""
    (X, Y), (kx, ky), (dx, dy), (cx, cy) = mask.grid, mask.kernel, mask.dilation, mask.causal
    _check_tables(X, kx, dx, cx); _check_tables(Y, ky, dy, cy)
    P = _na_plan(mask, bq)
    ok = lambda a, b: (_in_window_py(a[0], b[0], X, kx, dx, cx) and _in_window_py(a[1], b[1], Y, ky, dy, cy))
    out = {}
    for name, plan, inverse in (('q', P.qplan, False), ('k', P.kplan, True)):
        seen = np.zeros((X, Y), int)
        for row in plan:
            own = _patch_points(row, dx, dy)
            assert len(own) <= bq
            for pt in own: seen[pt] += 1
            rect = set(_rect_points(row, dx, dy))
            assert all(0 <= x < X and 0 <= y < Y for x, y in rect)
            need = {(x, y) for x in range(X) for y in range(Y) for o in own if (ok(o, (x, y)) if not inverse
                                                                               else ok((x, y), o))}
            assert need <= rect, (name, row, sorted(need - rect))
            # tight: every grid row and column of the rectangle holds a pair
            assert {x for x, _ in need} == {x for x, _ in rect} and {y for _, y in need} == {y for _, y in rect}
        assert (seen == 1).all(), (name, seen)
        out[name] = len(plan)
    return out


PLANS = [((1, 20), (1, 5), (1, 3), (False, True)), ((7, 9), (3, 5), (2, 1), (False, False)),
         ((12, 10), (5, 3), (2, 3), (True, False)), ((9, 8), (3, 3), (3, 2), (True, True)),
         ((12, 10), (3, 5), (1, 1), (False, False))]


@pytest.mark.parametrize('geo', PLANS)
@pytest.mark.parametrize('bq', [64, 32, 16])
def test_plan_brute_force(geo, bq):
    "Patches tile the grid once; each rectangle holds every pair `_in_window_py` allows, and is tight per axis."
    out = _check_plan(_Mask('window', 0, *geo), bq)
    assert out['q'] == out['k'] > 0


def test_tables_brute_force():
    "`_axis_tables` against `_window_py` / `_in_window_py`: axis lengths ≤ 20, kernel ≤ 7, dilation ≤ 3, causal or not."
    n = 0
    for L in (1, 2, 5, 9, 12, 13, 20):
        for ks in (1, 3, 5, 7):
            for d in (1, 2, 3):
                for c in (False, True):
                    if ks * d <= L:
                        _check_tables(L, ks, d, c); n += 1
    assert n >= 80, n


def test_pair_counts():
    """64×64 grid, 7×7 window, B_q = 64: allowed pairs 64²·49; 8×8 patches with 14×14 key rectangles in the interior
    visit (8 + 6)²/49 = 4× the allowed pairs there, fewer at the borders, also counting whole tiles of B_k = 32 score
    slots; 1-D ranges (7 grid rows of 64 keys) ≥ 9×. A narrow grid (a referee's finding): on a 4096×1 grid the
    patches follow the axis (64×1, not 8×8 with 8 of 64 slots used): a line of 64 queries and its 70 keys, 10× the
    allowed pairs like the 1-D ranges, in 64·96 score slots, 13.7× (36.6× with 8×8 patches)."""
    for d in (1, 2):
        patch, ranges, allowed, slots = _na_pairs_visited(_Mask('window', 0, (64, 64), (7, 7), (d, d), (False, False)), 64)
        assert allowed == 64 * 64 * 49
        assert patch <= slots <= 4 * allowed and ranges >= 9 * allowed
    patch, ranges, allowed, slots = _na_pairs_visited(_Mask('window', 0, (4096, 1), (7, 1), (1, 1), (False, False)), 64)
    assert _na_plan(_Mask('window', 0, (4096, 1), (7, 1), (1, 1), (False, False)), 64).py == 1
    assert allowed == 4096 * 7 and patch <= 10 * allowed and slots <= 96 / 7 * allowed   # 70 keys in 3 tiles of 32


def test_kernels_under_the_simulator():
    "tests/sim_na_tiled.py in a fresh process with NUMBA_ENABLE_CUDASIM=1: every test there passes."
    env = {**os.environ, 'NUMBA_ENABLE_CUDASIM': '1'}
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(ROOT / 'tests' / 'sim_na_tiled.py')],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert re.search(r'(\d+) passed', p.stdout) and int(re.search(r'(\d+) passed', p.stdout).group(1)) >= 17, p.stdout[-500:]
    assert 'failed' not in p.stdout and 'skipped' not in p.stdout, p.stdout[-500:]


PTXAS_SCRIPT = r'''
import json, os, re, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from numba import float32, int32, int16
from numba.core.types import float16
from numba.cuda import compile_ptx
import numba.cuda.dispatcher as disp
import geobook.attention as A
from test_attention_cudasim import _find_ptxas, PTXAS_RE
a3, a2, i2 = float32[:, :, ::1], float32[:, ::1], int32[:, ::1]
folder = Path(sys.argv[1]); exe = _find_ptxas()
if exe is None: print('NOPTXAS'); sys.exit(0)
disp.get_current_device = lambda: type('FakeDevice', (), {'compute_capability': (9, 0)})()   # compile for sm_90
def facts(name, fn, sig, smem_expected):
    ptx, _ = compile_ptx(fn, sig, cc=(9, 0), launch_bounds=A._LAUNCH_BOUNDS)
    (folder / f'{name}.ptx').write_text(ptx)
    p = subprocess.run([exe, '-arch=sm_90', '-v', str(folder / f'{name}.ptx'), '-o', str(folder / f'{name}.cubin')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    f = {k: int(m.group(1)) for k, rx in PTXAS_RE.items() if (m := re.search(rx, p.stderr + p.stdout))}
    f['n_f64'] = sum(bool(re.search(r'\.f64\b', l)) for l in ptx.splitlines())
    f['shfl'] = 'shfl.sync.bfly' in ptx
    f['smem_expected'] = smem_expected
    return f
out, geo = {}, (i2, i2, i2, int32, int32, int32, int32)
for D in (64, 128):
    bq, bk, _ = A._tiled_shape(D)
    rows, cols, _ = A._bwd_shape(D)
    out[f'na_fwd_D{D}'] = facts(f'na_fwd_D{D}', A._na_fwd_tiled_py(D, True), (a3, a3, a3, a3, a2, a2, float32) + geo,
                                A._tiled_smem(bq, bk, D) + 4 * (5 * bq + 3 * bk))   # + query indices and windows, key coordinates
    for keys in (False, True):
        name = f'na_{"dkdv" if keys else "dq"}_D{D}'
        out[name] = facts(name, A._na_bwd_tiled_py(D, keys), (a3, a3, a3, a3, a2, a2, a2, a3, a3, float32, float32) + geo,
                          A._bwd_smem(rows, cols, D, keys) + 4 * (rows + 3 * cols))   # + point indices and coordinates
print('RESULT' + json.dumps(out))
'''


def test_ptxas_facts(tmp_path):
    """The GPU builds (launch bounds, row max by warp shuffles in the forward) of the forward, dQ and dK/dV kernels at
    D ∈ {64, 128}, compiled for sm_90 in a process without the simulator and assembled by the nvcc wheel's ptxas:
    0-byte stack, no spills, ≤ 128 registers (4 blocks of 128 threads per SM), the predicted static shared memory,
    no float64 instruction."""
    pytest.importorskip('numba.cuda')
    env = {k: v for k, v in os.environ.items() if k != 'NUMBA_ENABLE_CUDASIM'}
    script = tmp_path / 'ptxas_na.py'; script.write_text(PTXAS_SCRIPT)
    p = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT / 'tests')], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=1200)
    if 'NOPTXAS' in p.stdout: pytest.skip('no ptxas (the `ptx` extra installs it)')
    if p.returncode != 0 and ('NVVM' in p.stderr or 'libNVVM' in p.stderr): pytest.skip('NVVM not available')
    lines = [l for l in p.stdout.splitlines() if l.startswith('RESULT')]
    assert lines, p.stderr[-3000:]
    res = json.loads(lines[-1][6:])
    assert len(res) == 6, sorted(res)
    for name, f in res.items():
        assert f['stack'] == 0 and f['spill_st'] == 0 and f['spill_ld'] == 0, (name, f)
        assert f['regs'] <= 128 and f['smem'] == f['smem_expected'] and f['n_f64'] == 0, (name, f)
        assert f['shfl'] == name.startswith('na_fwd'), (name, f)
