"""Every notebook's test cells, one pytest test per notebook, run by nbdev's own runner (`nbdev.test.test_nb`), which
also must leave no error output in any cell (nbdev's runner does not raise when a figure fails to render).

Cells flagged `slow` or `cuda` are skipped unless GEOBOOK_TEST_FLAGS names them (`make test-all` does)."""
import sys, time
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from notebooks import chapters, default_exp, run_isolated

NBS = chapters()

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    ok, secs, errors = run_isolated(nb)
    print(f'{nb.name}: {secs:.1f} s')
    assert not errors, f'{nb.name}: cells left error outputs (e.g. a figure that failed to render): {errors}'
    assert ok, f'{nb.name} failed (traceback above); run it in JupyterLab or `nbdev-test {nb.relative_to(nb.parents[1])}`'

def test_every_chapter_exports_a_module():
    "Each numbered chapter that declares `#| default_exp` has its module in geobook/."
    for nb in NBS:
        if nb.name == 'index.ipynb' or (mod := default_exp(nb)) is None: continue   # e.g. the performance page
        path = nb.parents[1] / 'geobook' / (mod.replace('.', '/') + '.py')
        assert path.exists(), f'{nb.name} exports to {path}, which is missing: run nbdev-export'
