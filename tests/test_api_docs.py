"""Every name a module exports is documented: a docstring of at least a sentence for every public function and class
(issue 8: "every exported function has a docstring with shapes and the math symbol"); the site test checks that each
also appears in its chapter's API section."""
import importlib, inspect, pkgutil
import pytest
import geobook

MODULES = [m.name for m in pkgutil.iter_modules(geobook.__path__) if not m.name.startswith('_')]
EXPORTS = [(m, n) for m in MODULES for n in importlib.import_module(f'geobook.{m}').__all__
           if callable(getattr(importlib.import_module(f'geobook.{m}'), n))]


def test_every_module_exports_something():
    assert {'core', 'ntk', 'rg_flow', 'coding_rate', 'sliced', 'attention'} <= set(MODULES)
    assert len(EXPORTS) > 40


@pytest.mark.parametrize('module,name', EXPORTS, ids=[f'{m}.{n}' for m, n in EXPORTS])
def test_export_has_docstring(module, name):
    obj = getattr(importlib.import_module(f'geobook.{module}'), name)
    doc = inspect.getdoc(obj) or ''
    assert len(doc.split()) >= 6, f'geobook.{module}.{name} needs a docstring (what it computes, shapes, symbol)'
