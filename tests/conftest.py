"""Shared pytest settings: tests marked `slow` or `cuda` run only when GEOBOOK_TEST_FLAGS names them
(`make test-all` sets GEOBOOK_TEST_FLAGS="slow", plus "cuda" where nvidia-smi finds a GPU), mirroring the nbdev flags of the notebooks' cells."""
import os
from pathlib import Path
import pytest

# Before torch or numba start their OpenMP pools (see the Makefile): spin-waiting pools steal each other's cores.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

def pytest_collection_modifyitems(config, items):
    wanted = set(os.environ.get('GEOBOOK_TEST_FLAGS', '').split())
    for item in items:
        for flag in ('slow', 'cuda'):
            if flag in item.keywords and flag not in wanted:
                item.add_marker(pytest.mark.skip(reason=f"'{flag}' test: run with make test-all (GEOBOOK_TEST_FLAGS={flag})"))

@pytest.fixture(scope='module')
def shots(request, tmp_path_factory) -> Path:
    """Where a browser test's screenshots go: GEOBOOK_SCREENSHOTS if set, else a temporary folder named after the test
    module (printed), never the repository or the site."""
    name = request.module.__name__.rpartition('.')[2].removeprefix('test_')
    d = Path(os.environ['GEOBOOK_SCREENSHOTS']) if os.environ.get('GEOBOOK_SCREENSHOTS') else \
        tmp_path_factory.mktemp(f'{name}-screenshots')
    d.mkdir(parents=True, exist_ok=True)
    print(f'\nscreenshots ({name}): {d}')
    return d
