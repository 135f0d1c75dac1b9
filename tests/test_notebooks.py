"""Every notebook's test cells, one pytest test per notebook, run by nbdev's own runner (`nbdev.test.test_nb`), which
also must leave no error output in any cell (nbdev's runner does not raise when a figure fails to render).

Cells flagged `slow` or `cuda` are skipped unless GEOBOOK_TEST_FLAGS names them (`make test-all` does)."""
import sys, time
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from notebooks import chapters, run_isolated

NBS = chapters()

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    ok, secs, errors = run_isolated(nb)
    print(f'{nb.name}: {secs:.1f} s')
    assert not errors, f'{nb.name}: cells left error outputs (e.g. a figure that failed to render): {errors}'
    assert ok, f'{nb.name} failed (traceback above); run it in JupyterLab or `nbdev-test {nb.relative_to(nb.parents[1])}`'

def test_every_chapter_exports_a_module():
    "Each numbered chapter declares `#| default_exp` and its module exists in geobook/."
    import json, re
    for nb in NBS:
        if nb.name == 'index.ipynb': continue
        src = ''.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', src)
        if m is None: continue   # pages such as a performance page export nothing
        mod = nb.parents[1] / 'geobook' / (m.group(1).replace('.', '/') + '.py')
        assert mod.exists(), f'{nb.name} exports to {mod}, which is missing: run nbdev-export'
