"""The book's notebooks in reading order, and the nbdev flags a run skips (shared by run_book.py and the tests)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
ALL_FLAGS = ('slow', 'cuda')

def chapters() -> list[Path]:
    "index.ipynb first, then the numbered notebooks in order; files starting with '_' or '.' are not pages."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(nbs, key=lambda p: (p.name != 'index.ipynb', p.name))

def skip_flags() -> list[str]:
    "Flags to skip: all of `slow cuda` except those listed in GEOBOOK_TEST_FLAGS (make test-all sets it to both)."
    wanted = set(os.environ.get('GEOBOOK_TEST_FLAGS', '').split())
    return [f for f in ALL_FLAGS if f not in wanted]
