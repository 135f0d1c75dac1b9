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

MODULES = ['core', 'book', 'rg_flow', 'coding_rate', 'feature_learning', 'attention']

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
        yield from (('negative', -1), ('fractional', 2.5), ('string', 'a'), ('beyond_2**64', 2**70))
    elif kind == 'callable':
        yield from (('string', 'abc'), ('number', 3))
    elif kind == 'bool':
        yield from (('string', 'yes'),)
    elif kind == 'activation':
        yield from (('unknown', 'no-such-activation'), ('number', 3), ('not_elementwise', lambda z: z.sum()))
    elif kind == 'widths':          # a list of layer widths, each an int >= 1
        yield from (('empty', []), ('zero', [4, 0, 4]), ('negative', [4, -1, 4]), ('fractional', [4, 2.5, 4]),
                    ('huge', [4, 10**12, 4]), ('string', 'abc'))
    elif kind == 'sizes':           # a list of ints >= 1 (e.g. widths to sweep)
        yield from (('empty', []), ('zero', [8, 0]), ('negative', [8, -1]), ('fractional', [8, 2.5]),
                    ('huge', [8, 10**12]), ('string', 'abc'))
    elif kind == 'floats':          # a list of positive floats (e.g. learning rates)
        yield from (('empty', []), ('zero', [0.1, 0.0]), ('negative', [0.1, -1.0]), ('nan', [0.1, math.nan]),
                    ('string', 'abc'))
    elif kind == 'module':
        yield from (('string', 'abc'), ('number', 3))
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

def _labels(n=12, k=3):
    import torch
    return torch.arange(n) % k

def _unit_rows(n=12, d=5, seed=0):
    Z = _t(n, d, seed=seed)
    return Z / Z.norm(dim=1, keepdim=True)

def _coding_rate_specs():
    import torch
    from geobook import coding_rate as cr
    S = lambda: _t(6, 6, seed=1)
    A = lambda: (lambda M: M @ M.T)(_t(10, 3, seed=2).abs())
    X2 = lambda: torch.cat([_t(10, 2, seed=3), _t(10, 2, seed=4) + 6])
    Gam = lambda: cr.sinkhorn(_t(12, 12, seed=5))
    mlc = lambda: cr.MLC(4, 3, 2, d_hidden=8, n_steps=3, n_sinkhorn=3, eval_every=1, eval_size=12, seed=0)
    Xm = lambda: _t(12, 4, seed=6).float()
    def fitted_mlc():
        m = mlc(); m.fit(Xm(), show_progress=False); return m
    def fitted_redunet():
        return cr.ReduNet(n_layers=2).fit(_unit_rows(), _labels())
    return [
        Spec('coding_rate.coding_rate', lambda: dict(Z=_t(12, 5), eps=0.5), {'Z': 'tensor', 'eps': 'positive'}),
        Spec('coding_rate.coding_rate_reduction', lambda: dict(Z=_t(12, 5), membership=_labels(), eps=0.5, n_classes=3),
             {'Z': 'tensor', 'membership': 'labels', 'eps': 'positive', 'n_classes': 'size'}),
        Spec('coding_rate.MCR2Loss', lambda: dict(eps=0.5, gamma=1.0), {'eps': 'positive', 'gamma': 'positive'}),
        Spec('coding_rate.MCR2Loss.forward', lambda: dict(Z=_t(12, 5), membership=_labels()),
             {'Z': 'tensor', 'membership': 'labels'}, call=lambda **kw: cr.MCR2Loss()(**kw)),
        Spec('coding_rate.sinkhorn', lambda: dict(S=S(), n_iters=10, eta=0.1),
             {'S': 'tensor', 'n_iters': 'size', 'eta': 'positive'}, accept={'S': {'extra_dim'}}),
        Spec('coding_rate.kmeans', lambda: dict(X=X2(), k=2, n_init=2, n_iters=10, seed=0),
             {'X': 'tensor', 'k': 'size', 'n_init': 'size', 'n_iters': 'size', 'seed': 'seed'}),
        Spec('coding_rate.spectral_clustering', lambda: dict(A=A(), k=2, seed=0),
             {'A': 'tensor', 'k': 'size', 'seed': 'seed'}),
        Spec('coding_rate.clustering_accuracy', lambda: dict(y_true=_labels(), y_pred=_labels()),
             {'y_true': 'labels', 'y_pred': 'labels'},
             accept={'y_true': {'huge_label', 'negative_label'}, 'y_pred': {'huge_label', 'negative_label'}}),
        Spec('coding_rate.nmi', lambda: dict(y_true=_labels(), y_pred=_labels()),
             {'y_true': 'labels', 'y_pred': 'labels'},
             accept={'y_true': {'huge_label', 'negative_label'}, 'y_pred': {'huge_label', 'negative_label'}}),
        Spec('coding_rate.eigengap_ratio', lambda: dict(Gamma=Gam(), k=3), {'Gamma': 'tensor', 'k': 'size'}),
        Spec('coding_rate.MLC', lambda: dict(d_in=4, d_feat=3, n_clusters=2, d_hidden=8, n_steps=3, seed=0),
             {'d_in': 'size', 'd_feat': 'size', 'n_clusters': 'size', 'eps': 'positive', 'd_hidden': 'size',
              'eta': 'positive', 'gamma': 'positive', 'n_sinkhorn': 'size', 'n_steps': 'size', 'lr': 'positive',
              'batch_size': 'size', 'select': 'choice', 'eval_every': 'size', 'patience': 'size', 'eval_size': 'size',
              'seed': 'seed'},
             # sizes clipped to the data (batch, evaluation subset) or counts of evaluations: no allocation
             accept={'batch_size': {'huge'}, 'eval_every': {'huge'}, 'patience': {'huge'}, 'eval_size': {'huge'}}),
        Spec('coding_rate.MLC.fit', lambda: dict(X=Xm()), {'X': 'tensor', 'show_progress': 'bool'},
             call=lambda **kw: mlc().fit(**kw)),
        Spec('coding_rate.MLC.fit_predict', lambda: dict(X=Xm()), {'X': 'tensor'}, call=lambda **kw: mlc().fit_predict(**kw)),
        Spec('coding_rate.MLC.forward', lambda: dict(X=Xm()), {'X': 'tensor'}, call=lambda **kw: fitted_mlc()(**kw),
             accept={'X': {'empty'}}),
        Spec('coding_rate.MLC.predict', lambda: dict(X=Xm()), {'X': 'tensor'}, call=lambda **kw: fitted_mlc().predict(**kw),
             accept={'X': {'empty'}}),
        Spec('coding_rate.MLC.transform', lambda: dict(X=Xm()), {'X': 'tensor'}, call=lambda **kw: fitted_mlc().transform(**kw),
             accept={'X': {'empty'}}),
        Spec('coding_rate.MLC.eigengap', lambda: dict(X=Xm()), {'X': 'tensor'}, call=lambda **kw: fitted_mlc().eigengap(**kw)),
        Spec('coding_rate.ReduNet', lambda: dict(n_layers=2, eta=0.5, eps=0.5, lam=100.0),
             {'n_layers': 'size', 'eta': 'positive', 'eps': 'positive', 'lam': 'positive'}),
        Spec('coding_rate.ReduNet.fit', lambda: dict(Z=_unit_rows(), labels=_labels(), n_classes=3),
             {'Z': 'tensor', 'labels': 'labels', 'n_classes': 'size'}, call=lambda **kw: cr.ReduNet(n_layers=2).fit(**kw)),
        Spec('coding_rate.ReduNet.forward', lambda: dict(Z=_unit_rows(seed=7)), {'Z': 'tensor'},
             call=lambda **kw: fitted_redunet()(**kw), accept={'Z': {'empty'}}),
        Spec('coding_rate.ReduNet.predict', lambda: dict(Z=_unit_rows(seed=7)), {'Z': 'tensor'},
             call=lambda **kw: fitted_redunet().predict(**kw), accept={'Z': {'empty'}}),
        Spec('coding_rate.sample_manifolds', lambda: dict(n_per_class=5, kinds=['line', 'circle'], ambient_dim=3, seed=0),
             {'n_per_class': 'size', 'kinds': 'choice', 'ambient_dim': 'size', 'noise': 'nonneg', 'seed': 'seed'}),
    ]

def _rg_flow_specs():
    import torch
    from geobook import rg_flow as rg
    flow = dict(activation='tanh', C_W=1.5, C_b=0.1, K0=1.0, depth=5)
    flow_kinds = {'activation': 'activation', 'C_W': 'positive', 'C_b': 'nonneg', 'K0': 'positive', 'depth': 'size',
                  'n_points': 'size'}
    return [
        Spec('rg_flow.Activation', lambda: dict(name='cube', fn=lambda z: z**3), {'name': 'name', 'fn': 'callable'},
             accept={'name': {'path'}}),
        Spec('rg_flow.scale_invariant', lambda: dict(a_plus=1.0, a_minus=0.2), {'a_plus': 'real', 'a_minus': 'real'}),
        Spec('rg_flow.leaky_relu', lambda: dict(slope=0.1), {'slope': 'unit'}),
        Spec('rg_flow.as_activation', lambda: dict(activation='tanh'), {'activation': 'activation'}),
        Spec('rg_flow.input_kernel', lambda: dict(x=_t(3, 4), C_W=1.0, C_b=0.1),
             {'x': 'tensor', 'C_W': 'positive', 'C_b': 'nonneg'}, accept={'x': {'missing_dim'}}),   # (n₀,): one input
        Spec('rg_flow.kernel_flow', lambda: dict(flow), flow_kinds | {'on_overflow': 'choice'}),
        Spec('rg_flow.correlation_flow', lambda: dict(flow, K0=torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64)),
             flow_kinds | {'K0': 'tensor'}, accept={'K0': {'extra_dim'}}),                       # a batch of 2×2
        Spec('rg_flow.chi_parallel', lambda: dict(activation='tanh', C_W=1.5, K=1.0),
             {'activation': 'activation', 'C_W': 'positive', 'K': 'positive', 'n_points': 'size'}),
        Spec('rg_flow.chi_perp', lambda: dict(activation='tanh', C_W=1.5, K=1.0),
             {'activation': 'activation', 'C_W': 'positive', 'K': 'positive', 'n_points': 'size'}),
        Spec('rg_flow.Universality', lambda: dict(kind='K*=0'), {'kind': 'choice'}),
        Spec('rg_flow.universality_class', lambda: dict(activation='tanh'), {'activation': 'activation', 'n_points': 'size'}),
        Spec('rg_flow.Criticality', lambda: dict(exists=True, C_b=0.0, C_W=1.0, K_star=0.0,
                                                 universality=rg.universality_class('tanh')),
             {'C_W': 'positive', 'C_b': 'nonneg', 'K_star': 'nonneg'}),
        Spec('rg_flow.criticality', lambda: dict(activation='tanh', n_grid=41),
             {'activation': 'activation', 'n_grid': 'size', 'n_points': 'size'}),
        Spec('rg_flow.four_point_vertex', lambda: dict(flow, widths=[4, 8, 8, 8, 8, 8]), flow_kinds | {'widths': 'widths'}),
        Spec('rg_flow.excess_kurtosis', lambda: dict(activation='tanh', C_W=1.5, C_b=0.1, K0=1.0, widths=[4, 8, 8, 8]),
             {'activation': 'activation', 'C_W': 'positive', 'C_b': 'nonneg', 'K0': 'positive', 'widths': 'widths'}),
        Spec('rg_flow.metric_shift', lambda: dict(flow, K0=torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64)),
             flow_kinds | {'K0': 'tensor'}, accept={'K0': {'extra_dim', 'missing_dim'}}),       # batch; variances
        Spec('rg_flow.correlation_length', lambda: dict(activation='tanh', C_W=1.5, C_b=0.1),
             {'activation': 'activation', 'C_W': 'positive', 'C_b': 'nonneg', 'K0': 'positive', 'n_points': 'size'}),
        Spec('rg_flow.scale_invariant_moments', lambda: dict(widths=[4, 8, 8], order=2),
             {'widths': 'widths', 'order': 'size', 'activation': 'activation'}, accept={'widths': {'huge'}}),  # closed form
        Spec('rg_flow.sample_preactivations',
             lambda: dict(widths=[3, 8, 8], activation='tanh', C_W=1.5, C_b=0.1, x=_t(3), n_samples=20, seed=0),
             {'widths': 'widths', 'activation': 'activation', 'C_W': 'positive', 'C_b': 'nonneg', 'x': 'tensor',
              'n_samples': 'size', 'seed': 'seed', 'keep': 'choice', 'method': 'choice', 'chunk_size': 'size',
              'show_progress': 'bool'},
             accept={'x': {'extra_dim'}, 'chunk_size': {'huge'}}),       # (1, n₀): one input as a batch; a memory bound
        # extreme but well-typed values: the 'huge' size variant (10**12) is replaced by the value named here; the other
        # size variants (0, -1, 2.5, True, 'a') pass through and must raise, or are valid values listed in `accept`
        Spec('rg_flow.scale_invariant[extreme]', lambda: dict(a_plus=1.0, a_minus=0.2), {'a_plus': 'size', 'a_minus': 'size'},
             call=_extreme(rg.scale_invariant, a_plus=1e200, a_minus=-1e200),
             accept={'a_plus': {'zero', 'negative', 'fractional'}, 'a_minus': {'zero', 'negative', 'fractional'}}),
        Spec('rg_flow.criticality[extreme]', lambda: dict(activation='relu'), {'activation': 'size'},
             call=_extreme(rg.criticality, activation=lambda z: 1e200 * torch.relu(z))),
        Spec('rg_flow.input_kernel[extreme]', lambda: dict(x=_t(3, 4), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(3, 4) * 1e200)),
        Spec('rg_flow.input_kernel[extreme float32]', lambda: dict(x=_t(3, 4).float(), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(3, 4).float() * 1e30)),
        Spec('rg_flow.input_kernel[tiny]', lambda: dict(x=_t(3, 4), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(3, 4) * 1e-200)),
        Spec('rg_flow.sample_preactivations[extreme seed]',
             lambda: dict(widths=[3, 8], activation='tanh', C_W=1.5, C_b=0.1, x=_t(3), n_samples=5, seed=0), {'seed': 'size'},
             call=_extreme(rg.sample_preactivations, seed=2**70), accept={'seed': {'zero'}}),
        Spec('rg_flow.chi_perp[extreme]', lambda: dict(activation='tanh', C_W=1.0, K=1.0), {'K': 'size'},
             call=_extreme(rg.chi_perp, K=1e300), accept={'K': {'fractional'}}),
        Spec('rg_flow.correlation_length[extreme]', lambda: dict(activation='tanh', C_W=1.5, C_b=0.1), {'C_W': 'size'},
             call=_extreme(rg.correlation_length, C_W=1e6), accept={'C_W': {'fractional'}}),
    ]

def _extreme(fn, **values):
    "`fn` called with each argument in `values` set to that value when the sweep passes the 'huge' size variant (10**12)."
    def call(**kw):
        for k, v in values.items():
            if type(kw.get(k)) is int and kw[k] == HUGE: kw[k] = v
        return fn(**kw)
    return call

def _attention_specs():
    qkv = lambda *shape: dict(q=_t(*shape, seed=10).float(), k=_t(*shape, seed=11).float(), v=_t(*shape, seed=12).float())
    tensors = {'q': 'tensor', 'k': 'tensor', 'v': 'tensor'}
    flags = {'causal': 'bool', 'scale': 'positive', 'return_lse': 'bool'}
    # a leading axis of 1 broadcasts against the others' batch axes (SDPA's contract): a documented result
    broadcast = {'q': {'extra_dim'}, 'k': {'extra_dim'}, 'v': {'extra_dim'}}
    na = {'kernel_size': 'size', 'dilation': 'size'}
    return [
        Spec('attention.attention_reference', lambda: qkv(2, 2, 9, 4), tensors | flags, accept=broadcast),
        Spec('attention.flash_attention', lambda: dict(qkv(2, 2, 9, 4), backend='cpu'),
             tensors | flags | {'backend': 'choice'}, accept=broadcast),
        Spec('attention.neighborhood_attention', lambda: dict(qkv(2, 2, 12, 4), kernel_size=3, backend='cpu'),
             tensors | na | flags | {'backend': 'choice'}),
        Spec('attention.neighborhood_attention_reference', lambda: dict(qkv(2, 2, 12, 4), kernel_size=3),
             tensors | na | flags),
    ]

def _feature_learning_specs():
    import torch
    from geobook import feature_learning as fl
    X = lambda: _t(16, 4, seed=8)
    Xy = lambda: (X(), _t(16, 1, seed=9))
    net = lambda seed=0: fl.abc_mlp(4, 16, 2, seed=seed)
    mk = lambda n, seed: fl.abc_mlp(4, n, 2, seed=seed)
    return [
        Spec('feature_learning.abc_exponents', lambda: dict(parameterization='mup', depth=2, optimizer='sgd'),
             {'parameterization': 'choice', 'depth': 'size', 'optimizer': 'choice'}),
        Spec('feature_learning.ABCMLP', lambda: dict(d_in=4, width=16, depth=2, seed=0),
             {'d_in': 'size', 'width': 'size', 'depth': 'size', 'd_out': 'size', 'parameterization': 'choice',
              'activation': 'activation', 'C_W': 'positive', 'seed': 'seed'}),
        Spec('feature_learning.abc_mlp', lambda: dict(d_in=4, width=16, depth=2, seed=0),
             {'d_in': 'size', 'width': 'size', 'depth': 'size', 'd_out': 'size', 'parameterization': 'choice',
              'activation': 'activation', 'C_W': 'positive', 'seed': 'seed'}),
        Spec('feature_learning.ABCMLP.forward', lambda: dict(x=X()), {'x': 'tensor'}, call=lambda **kw: net()(**kw)),
        Spec('feature_learning.ABCMLP.preactivations', lambda: dict(x=X()), {'x': 'tensor'},
             call=lambda **kw: net().preactivations(**kw)),
        Spec('feature_learning.ABCMLP.param_groups', lambda: dict(lr=0.1, optimizer='adam'),
             {'lr': 'positive', 'optimizer': 'choice'}, call=lambda **kw: net().param_groups(**kw)),
        Spec('feature_learning.coord_check', lambda: dict(make_model=mk, widths=[8, 16], data=Xy(), steps=2, lr=0.1, seed=0),
             {'make_model': 'callable', 'widths': 'sizes', 'steps': 'count', 'lr': 'positive', 'seed': 'seed',
              'optimizer': 'choice', 'loss': 'choice', 'show_progress': 'bool'},
             names={'widths': 'width'}),      # a huge width is refused by the model factory, which names `width`;
                                              # steps = 0 is valid (records the initialisation only), so steps is a count
        Spec('feature_learning.feature_change', lambda: dict(model_before=net(0), model_after=net(1), x=X()),
             {'model_before': 'module', 'model_after': 'module', 'x': 'tensor'}),
        Spec('feature_learning.kernel_change', lambda: dict(model_before=net(0), model_after=net(1), x=X()),
             {'model_before': 'module', 'model_after': 'module', 'x': 'tensor'}),
        Spec('feature_learning.lr_sweep',
             lambda: dict(X=X(), y=torch.arange(16) % 3, widths=[8, 16], lrs=[0.05, 0.1], steps=3, batch_size=8, seed=0),
             {'X': 'tensor', 'y': 'labels', 'widths': 'sizes', 'lrs': 'floats', 'depth': 'size', 'parameterization': 'choice',
              'steps': 'size', 'batch_size': 'size', 'optimizer': 'choice', 'loss': 'choice', 'activation': 'activation',
              'seed': 'seed', 'show_progress': 'bool'}),
    ]

class _Lazy(dict):
    "Specs are built on first use (in the child process), module by module."
    builders = {'core': _core_specs, 'book': _book_specs, 'coding_rate': _coding_rate_specs, 'rg_flow': _rg_flow_specs, 'feature_learning': _feature_learning_specs, 'attention': _attention_specs}
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
    'rg_flow.NAMED_ACTIVATIONS': 'a dict of Activation objects',
    'feature_learning.PARAMETERIZATIONS': 'a dict of exponents',
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
