"""Measure what `pip install geobook` adds on top of torch: two fresh venvs (torch alone; torch + geobook without
extras), their site-packages sizes, and the largest packages geobook brings. Prints one JSON object; the README
quotes it. Usage: python tools/measure_install.py [--torch torch==2.13.0]"""
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def site_packages(venv: Path) -> Path:
    return next((venv / 'lib').glob('python3*/site-packages'))

def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file() and not p.is_symlink())

def venv_with(where: Path, *specs: str) -> Path:
    subprocess.run([sys.executable, '-m', 'venv', str(where)], check=True)
    pip = [str(where / 'bin' / 'python'), '-m', 'pip', 'install', '-q', '--disable-pip-version-check']
    for spec in specs: subprocess.run(pip + spec.split(), check=True)
    return site_packages(where)

def by_distribution(sp: Path) -> dict[str, int]:
    "Top-level folders of site-packages and their sizes."
    return {p.name: du(p) for p in sp.iterdir() if p.is_dir() and not p.name.endswith(('.dist-info', '__pycache__'))}

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--torch', default='torch==2.13.0'); a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = venv_with(Path(d) / 'torch', a.torch)
        full = venv_with(Path(d) / 'geobook', a.torch, f'{ROOT}')
        b, f = by_distribution(base), by_distribution(full)
        added = sorted(((k, v - b.get(k, 0)) for k, v in f.items() if v - b.get(k, 0) > 1_000_000), key=lambda kv: -kv[1])
        print(json.dumps({'torch_spec': a.torch, 'torch_venv_MB': round(du(base) / 1e6), 'geobook_venv_MB': round(du(full) / 1e6),
                          'added_MB': round((du(full) - du(base)) / 1e6), 'largest_added_MB': {k: round(v / 1e6) for k, v in added[:8]}}))
