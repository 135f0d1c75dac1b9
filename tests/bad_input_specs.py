"""What `tests/test_bad_input.py` calls: for every exported callable, a valid call and the kind of each argument.

A `Spec` names the callable (`module.name`, or `module.Class.method` for a method), a function that makes a valid set of
keyword arguments, and the kind of each argument to attack. For each argument, each bad value of its kind replaces the
valid one (all others stay valid): the call must raise a ValueError/TypeError naming the argument, unless the spec
lists that (argument, variant) in `accept` as a documented result, which must then be finite.
"""
from __future__ import annotations
import importlib, inspect, math
from dataclasses import dataclass, field
from typing import Callable

MODULES = ['core', 'book']

# ---------------------------------------------------------------------------------------------------------------------
# bad values by kind
HUGE = 10**12

def variants(kind: str, valid):
    "(label, bad value) pairs for an argument of `kind` whose valid value is `valid`."
    import numpy as np, torch
    if kind in ('tensor', 'tensor_any'):
        x = torch.as_tensor(valid)
        yield 'string', 'abc'
        yield 'object', object()
        if x.is_floating_point() and x.numel():
            for lab, val in (('nan', float('nan')), ('inf', float('inf'))):
                y = x.clone(); y.view(-1)[0] = val; yield lab, y
            yield 'complex', x.to(torch.complex64)
        if x.ndim >= 1: yield 'empty', x[:0]
        yield 'extra_dim', x.unsqueeze(0)
        if x.ndim >= 2: yield 'missing_dim', x.reshape(-1)
        elif x.ndim == 1 and kind == 'tensor': yield 'scalar', x[0]
        yield 'bool', x > 0
    elif kind == 'labels':
        y = torch.as_tensor(valid)
        yield 'string', 'abc'
        z = y.clone(); z[0] = 10**9; yield 'huge_label', z
        z = y.clone(); z[0] = -1; yield 'negative_label', z
        yield 'fractional', y.to(torch.float64) + 0.5
        yield 'wrong_length', y[:-1]
        yield 'extra_dim', y[None]
    elif kind == 'size':            # an int >= 1
        yield from (('zero', 0), ('negative', -1), ('fractional', 2.5), ('bool', True), ('string', 'a'), ('huge', HUGE))
    elif kind == 'count':           # an int >= 0
        yield from (('negative', -1), ('fractional', 2.5), ('string', 'a'), ('huge', HUGE))
    elif kind == 'positive':        # a float > 0
        yield from (('zero', 0.0), ('negative', -1.0), ('nan', math.nan), ('inf', math.inf), ('string', 'a'))
    elif kind == 'nonneg':          # a float >= 0
        yield from (('negative', -1.0), ('nan', math.nan), ('inf', math.inf), ('string', 'a'))
    elif kind == 'real':            # any finite float
        yield from (('nan', math.nan), ('inf', math.inf), ('string', 'a'))
    elif kind == 'unit':            # a float in [0, 1]
        yield from (('negative', -0.5), ('above_one', 1.5), ('nan', math.nan), ('string', 'a'))
    elif kind == 'choice':
        yield from (('unknown', 'no-such-choice'), ('wrong_type', 12345))
    elif kind == 'seed':
        yield from (('negative', -1), ('fractional', 2.5), ('string', 'a'))
    elif kind == 'callable':
        yield from (('string', 'abc'), ('number', 3))
    elif kind == 'bool':
        yield from (('string', 'yes'),)
    elif kind == 'name':
        yield from (('empty', ''), ('number', 3), ('path', '../x'))
    else:
        raise KeyError(f'unknown argument kind {kind!r}')


# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    name: str                                   # 'module.function', 'module.Class' (constructor) or 'module.Class.method'
    valid: Callable[[], dict]                   # fresh valid keyword arguments
    kinds: dict[str, str]                       # argument -> kind
    call: Callable | None = None                # how to call (default: the named callable with the keyword arguments)
    accept: dict[str, set] = field(default_factory=dict)   # argument -> variant labels that are documented results
    names: dict[str, str] = field(default_factory=dict)    # argument -> the name its error must use, if not its own

    def target(self):
        if self.call is not None: return self.call
        mod, rest = self.name.split('.', 1)
        obj = importlib.import_module(f'geobook.{mod}')
        for part in rest.split('.'): obj = getattr(obj, part)
        return obj


@dataclass
class Case:
    id: str
    param: str
    accepted: bool
    run: Callable


def cases(module: str) -> list[Case]:
    out = []
    for spec in SPECS.get(module, []):
        fn = spec.target()
        for param, kind in spec.kinds.items():
            for label, bad in variants(kind, spec.valid()[param] if param in spec.valid() else None):
                def run(spec=spec, fn=fn, param=param, label=label, kind=kind):
                    kw = spec.valid()
                    kw[param] = dict(variants(kind, kw.get(param)))[label]
                    return fn(**kw)
                out.append(Case(f'{spec.name}({param}={label})', spec.names.get(param, param),
                                label in spec.accept.get(param, ()), run))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the specs, module by module
def _t(*shape, seed=0):
    import torch
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

def _cov():
    import torch
    return torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=torch.float64)

def _core_specs():
    import torch
    f1 = lambda z: z**2
    f2 = lambda u, v: u * v
    return [
        Spec('core.all_finite', lambda: dict(t=_t(5)), {'t': 'tensor_any'},
             accept={'t': {'nan', 'inf', 'empty', 'extra_dim', 'scalar', 'bool', 'complex'}}),
        Spec('core.as_tensor', lambda: dict(x=_t(3, 2), name='x', ndim=2), {'x': 'tensor', 'name': 'name'},
             accept={'x': {'empty'}, 'name': {'path'}}),
        # the validators' errors name the argument they validate: their `name`
        Spec('core.check_positive', lambda: dict(value=1.0, name='eps'), {'value': 'positive'}, names={'value': 'eps'}),
        Spec('core.check_int', lambda: dict(value=3, name='n', minimum=1), {'value': 'size'},
             accept={'value': {'huge'}}, names={'value': 'n'}),
        Spec('core.check_choice', lambda: dict(value='a', name='kind', choices=['a', 'b']), {'value': 'choice'},
             names={'value': 'kind'}),
        Spec('core.seed_everything', lambda: dict(seed=0), {'seed': 'seed'}),
        Spec('core.as_generator', lambda: dict(seed=0), {'seed': 'seed'}),
        Spec('core.default_device', lambda: dict(device='cpu'), {'device': 'choice'}),
        Spec('core.progress', lambda: dict(iterable=range(3), total=3, show_progress=False),
             {'total': 'count', 'show_progress': 'bool'}, accept={'total': {'huge'}}, call=lambda **kw: list(__import__('geobook.core').core.progress(**kw))),
        Spec('core.hermite_rule', lambda: dict(n_points=8), {'n_points': 'size'}),
        Spec('core.gaussian_expectation_1d', lambda: dict(f=f1, k=torch.tensor([1.0, 2.0], dtype=torch.float64)),
             {'f': 'callable', 'k': 'tensor', 'n_points': 'size', 'rtol': 'positive', 'atol': 'nonneg',
              'max_points': 'size'}, accept={'k': {'empty', 'extra_dim', 'scalar'}}),
        Spec('core.gaussian_cholesky_2x2', lambda: dict(K=_cov()), {'K': 'tensor'}, accept={'K': {'extra_dim'}}),
        Spec('core.gaussian_expectation', lambda: dict(f=f2, K=_cov(), n_points=16),
             {'f': 'callable', 'K': 'tensor', 'n_points': 'size', 'max_points': 'size', 'chunk': 'size'},
             accept={'K': {'extra_dim'}, 'chunk': {'huge'}}),
    ]

def _book_specs():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    def figure(**kw):
        from geobook.book import book_figure
        fig, _ = book_figure(**kw); plt.close(fig)
    return [
        Spec('book.long_cell', lambda: dict(run=False), {'run': 'bool'}),
        Spec('book.book_figure', lambda: dict(nrows=1, ncols=2, width=6.0, height=3.0),
             {'nrows': 'size', 'ncols': 'size', 'width': 'positive', 'height': 'positive'}, call=figure),
        Spec('book.PeakMemory', lambda: dict(interval=0.001), {'interval': 'positive'}),
        Spec('book.benchmark_path', lambda: dict(name='sliced'), {'name': 'name'}),
        Spec('book.load_benchmark', lambda: dict(name='sliced'), {'name': 'name'}),
    ]

class _Lazy(dict):
    "Specs are built on first use (in the child process), module by module."
    builders = {'core': _core_specs, 'book': _book_specs}
    def get(self, module, default=None):
        if module not in self and module in self.builders: self[module] = self.builders[module]()
        return super().get(module, default)

SPECS = _Lazy()

# exported callables the sweep leaves out, and why
EXEMPT = {
    'core.QuadratureWarning': 'a warning class',
    'book.run_long': 'takes no arguments',
    'book.use_book_style': 'takes no arguments',
    'book.cuda_cell': 'takes no arguments',
}


def unswept() -> list[str]:
    "Exported callables with neither a spec nor an exemption."
    missing = []
    for m in MODULES:
        mod = importlib.import_module(f'geobook.{m}')
        names = {s.name.split('.')[1] for s in SPECS.get(m, [])}
        for n in mod.__all__:
            obj = getattr(mod, n)
            if not callable(obj) or f'{m}.{n}' in EXEMPT or n in names: continue
            missing.append(f'{m}.{n}')
    return missing
