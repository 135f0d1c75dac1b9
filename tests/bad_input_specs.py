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

MODULES = ['core', 'book', 'ntk', 'rg_flow', 'coding_rate', 'feature_learning', 'attention', 'sliced']

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
        Spec('rg_flow.input_kernel', lambda: dict(x=_t(2, 4), C_W=1.0, C_b=0.1),
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
        Spec('rg_flow.input_kernel[extreme]', lambda: dict(x=_t(2, 4), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(2, 4) * 1e200)),
        Spec('rg_flow.input_kernel[extreme float32]', lambda: dict(x=_t(2, 4).float(), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(2, 4).float() * 1e30)),
        Spec('rg_flow.input_kernel[tiny]', lambda: dict(x=_t(2, 4), C_W=1.0, C_b=0.0), {'x': 'size'},
             call=_extreme(rg.input_kernel, x=_t(2, 4) * 1e-200)),
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
             tensors | flags | {'backend': 'choice', 'validate_inputs': 'bool', 'fp32_precision': 'choice'}, accept=broadcast),
        Spec('attention.neighborhood_attention', lambda: dict(qkv(2, 2, 12, 4), kernel_size=3, backend='cpu'),
             tensors | na | flags | {'backend': 'choice', 'validate_inputs': 'bool'}),
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

def _ntk_specs():
    import torch
    from geobook import ntk
    X = lambda: _t(6, 3, seed=13)
    def blocks():
        Xa = torch.cat([_t(3, 3, seed=14), X()])
        K, T = ntk.nngp_ntk(Xa, None, 2, C_b=0.1)
        return dict(K_train=K[3:, 3:], K_test_train=K[:3, 3:], K_test=K[:3, :3], Theta_train=T[3:, 3:],
                    Theta_test_train=T[:3, 3:], y_train=_t(6, seed=15))
    mom = lambda: dict(k11=torch.tensor([1.0, 2.0], dtype=torch.float64), k12=torch.tensor([0.5, -0.3], dtype=torch.float64),
                       k22=torch.tensor([1.5, 0.7], dtype=torch.float64))
    moments = {'k11': 'tensor', 'k12': 'tensor', 'k22': 'tensor'}
    bcast = {k: {'extra_dim', 'scalar'} for k in moments}          # (1, 2) and () broadcast against (2,): documented
    mlp = lambda: ntk.MLP(3, 8, 2, C_b=0.1, seed=0, dtype=torch.float64)
    ens = lambda: {k: v for k, v in blocks().items()}
    reg = lambda: (lambda b: dict(Theta_train=b['Theta_train'], Theta_test_train=b['Theta_test_train'], y_train=b['y_train']))(blocks())
    gp = lambda: (lambda b: {k: b[k] for k in ('K_train', 'K_test_train', 'K_test', 'y_train')})(blocks())
    kern = {k: 'tensor' for k in ('K_train', 'K_test_train', 'K_test', 'Theta_train', 'Theta_test_train', 'y_train')}
    return [
        *[Spec(f'ntk.{f}', mom, moments, accept=bcast) for f in ('relu_moments', 'erf_moments', 'gelu_moments', 'linear_moments')],
        Spec('ntk.activation_fns', lambda: dict(activation='tanh'), {'activation': 'activation'}),
        Spec('ntk.leaky_relu_moments', lambda: dict(mom(), slope=0.1), moments | {'slope': 'unit'}, accept=bcast),
        Spec('ntk.LeakyReLU', lambda: dict(slope=0.1), {'slope': 'unit'}),
        Spec('ntk.quadrature_moments', lambda: dict(mom(), activation='tanh'),
             moments | {'activation': 'activation', 'n_points': 'size', 'chunk': 'size', 'rtol': 'positive', 'max_points': 'size'},
             accept=bcast | {'chunk': {'huge'}}),                 # `chunk` bounds memory; a huge one allocates nothing more
        Spec('ntk.nngp_ntk', lambda: dict(x1=X(), x2=_t(4, 3, seed=16), depth=2, activation='relu', C_W=2.0, C_b=0.1),
             {'x1': 'tensor', 'x2': 'tensor', 'depth': 'size', 'activation': 'activation', 'C_W': 'positive',
              'C_b': 'nonneg', 'batch_size': 'size', 'n_points': 'size', 'show_progress': 'bool'},
             accept={'batch_size': {'huge'}}),                    # tiles are clipped to the data
        Spec('ntk.MLP', lambda: dict(d_in=3, width=8, depth=2, seed=0),
             {'d_in': 'size', 'width': 'size', 'depth': 'size', 'd_out': 'size', 'activation': 'activation',
              'parameterization': 'choice', 'C_W': 'positive', 'C_b': 'nonneg', 'seed': 'seed'}),
        Spec('ntk.MLP.forward', lambda: dict(x=X()), {'x': 'tensor'}, call=lambda **kw: mlp()(**kw),
             accept={'x': {'extra_dim', 'empty'}}),               # any leading batch shape, like nn.Linear
        Spec('ntk.MLP.preactivation', lambda: dict(x=X(), layer=2), {'x': 'tensor', 'layer': 'size'},
             call=lambda **kw: mlp().preactivation(**kw), accept={'x': {'extra_dim', 'empty'}}),
        Spec('ntk.MLP.empirical_nngp', lambda: dict(x1=X(), x2=_t(4, 3, seed=16)), {'x1': 'tensor', 'x2': 'tensor'},
             call=lambda **kw: mlp().empirical_nngp(**kw)),
        Spec('ntk.empirical_ntk', lambda: dict(model=mlp(), x1=X(), x2=_t(4, 3, seed=16)),
             {'model': 'module', 'x1': 'tensor', 'x2': 'tensor', 'method': 'choice', 'trace': 'bool', 'batch_size': 'size',
              'show_progress': 'bool'}, accept={'batch_size': {'huge'}}),
        Spec('ntk.ntk_regression', reg, {'Theta_train': 'tensor', 'Theta_test_train': 'tensor', 'y_train': 'tensor',
                                         't': 'nonneg', 'lr': 'positive', 'ridge': 'nonneg'},
             accept={'t': {'inf'}}),                              # t = ∞ is documented: the converged predictor
        Spec('ntk.ntk_ensemble', ens, kern | {'t': 'nonneg', 'lr': 'positive'}, accept={'t': {'inf'}}),
        Spec('ntk.nngp_posterior', gp, {k: 'tensor' for k in ('K_train', 'K_test_train', 'K_test', 'y_train')} | {'noise': 'nonneg'}),
    ]

def _sliced_specs():
    import torch
    from geobook import sliced as sl
    X = lambda: _t(10, 3, seed=20)
    Y = lambda: _t(8, 3, seed=21) + 0.5
    Xe = lambda: _t(8, 3, seed=22)                                  # equal sizes: the fast (NumPy) path
    th = lambda: sl.sample_projections(3, 6, seed=0).contiguous()
    w = lambda n: torch.full((n,), 1.0 / n, dtype=torch.float64)
    e1 = lambda d=3: torch.eye(d, dtype=torch.float64)[0]
    clouds = {'X': 'tensor', 'Y': 'tensor'}
    weights = {'a': 'tensor', 'b': 'tensor'}
    sw = lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_projections=6, seed=0)
    sph = lambda: dict(X=_unit_rows(10, 3, seed=23), Y=_unit_rows(8, 3, seed=24), a=w(10), b=w(8), n_projections=6, seed=0)
    swae = lambda: sl.SWAE(6, 2, hidden=8, seed=0)
    return [
        # the 1-D atoms may carry any batch shape (..., n): a leading axis of 1 broadcasts, a documented result;
        # (1, n) weights broadcast with the batch () likewise
        Spec('sliced.wasserstein_1d', lambda: dict(u=_t(7, seed=25), v=_t(5, seed=26), u_weights=w(7), v_weights=w(5)),
             {'u': 'tensor', 'v': 'tensor', 'u_weights': 'tensor', 'v_weights': 'tensor', 'p': 'positive'},
             accept={'u': {'extra_dim'}, 'v': {'extra_dim'}, 'u_weights': {'extra_dim'}, 'v_weights': {'extra_dim'}}),
        Spec('sliced.wasserstein_1d_plan', lambda: dict(u=_t(7, seed=25), v=_t(5, seed=26), u_weights=w(7), v_weights=w(5)),
             {'u': 'tensor', 'v': 'tensor', 'u_weights': 'tensor', 'v_weights': 'tensor', 'sparse': 'bool'}),
        Spec('sliced.sample_projections', lambda: dict(d=3, n_projections=6, seed=0),
             {'d': 'size', 'n_projections': 'size', 'sampler': 'choice', 'seed': 'seed'}),
        Spec('sliced.sliced_costs', lambda: dict(X=X(), Y=Y(), projections=th(), a=w(10), b=w(8)),
             clouds | weights | {'projections': 'tensor', 'p': 'positive', 'chunk_size': 'size'},
             accept={'chunk_size': {'huge'}}),          # a chunk larger than L is clipped to L: nothing more is allocated
        Spec('sliced.sliced_wasserstein', lambda: dict(X=Xe(), Y=Y(), projections=th()),
             clouds | {'projections': 'tensor', 'p': 'positive', 'chunk_size': 'size'}, accept={'chunk_size': {'huge'}}),
        Spec('sliced.sliced_wasserstein', sw,
             clouds | weights | {'p': 'positive', 'n_projections': 'size', 'seed': 'seed', 'sampler': 'choice'}),
        Spec('sliced.max_sliced_wasserstein', lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_starts=2, n_candidates=8, n_iters=3, seed=0),
             clouds | weights | {'p': 'positive', 'n_starts': 'size', 'n_candidates': 'count', 'n_iters': 'count',
                                 'lr': 'positive', 'seed': 'seed', 'tol': 'nonneg', 'return_direction': 'bool'}),
        Spec('sliced.generalized_sliced_wasserstein', lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_projections=6, seed=0),
             clouds | weights | {'kind': 'choice', 'p': 'positive', 'n_projections': 'size', 'radius': 'positive',
                                 'degree': 'size', 'seed': 'seed', 'sampler': 'choice'}),
        Spec('sliced.generalized_sliced_wasserstein', lambda: dict(X=X(), Y=Y(), kind='poly', projections=sl.sample_projections(10, 6, seed=0).contiguous()),   # M = C(3+3−1, 3) = 10
             {'degree': 'size', 'projections': 'tensor'}),
        Spec('sliced.distributional_sliced_wasserstein', lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_projections=6, n_iters=2, seed=0),
             clouds | weights | {'p': 'positive', 'n_projections': 'size', 'lam': 'nonneg', 'n_iters': 'count',
                                 'lr': 'positive', 'seed': 'seed', 'return_projections': 'bool'}),
        Spec('sliced.augmented_sliced_wasserstein', lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_projections=6, hidden=4, n_iters=2, seed=0),
             clouds | weights | {'p': 'positive', 'n_projections': 'size', 'aug_dim': 'size', 'hidden': 'size',
                                 'lam': 'nonneg', 'n_iters': 'count', 'lr': 'positive', 'seed': 'seed', 'return_lift': 'bool'}),
        # κ (and its dimension d) are free parameters with no allocation: a huge d is a finite, documented value
        Spec('sliced.vmf_mean_resultant_length', lambda: dict(kappa=2.0, d=3), {'kappa': 'nonneg', 'd': 'size'},
             accept={'d': {'huge'}}),
        Spec('sliced.vmf_kl_uniform', lambda: dict(kappa=2.0, d=3), {'kappa': 'nonneg', 'd': 'size'}, accept={'d': {'huge'}}),
        Spec('sliced.vmf_sample', lambda: dict(mu=e1(), kappa=2.0, n=5, seed=0),
             {'mu': 'tensor', 'kappa': 'nonneg', 'n': 'size', 'seed': 'seed'}),
        Spec('sliced.pac_sliced_bound', lambda: dict(X=X(), Y=Y(), mu=e1(), kappa=2.0, diameter=20.0, n_projections=8, seed=0),
             clouds | {'mu': 'tensor', 'kappa': 'nonneg', 'diameter': 'positive', 'p': 'positive', 'delta': 'unit',
                       'n_projections': 'size', 'seed': 'seed'}),
        Spec('sliced.learn_slice_distribution',
             lambda: dict(X=X(), Y=Y(), diameter=20.0, kappas=[0.0, 4.0], n_projections=8, n_iters=2, seed=0),
             clouds | {'diameter': 'positive', 'p': 'positive', 'delta': 'unit', 'kappas': 'floats',
                       'n_projections': 'size', 'n_iters': 'count', 'lr': 'positive', 'seed': 'seed'},
             accept={'kappas': {'zero'}}),              # κ = 0 is the uniform distribution, a valid candidate
        Spec('sliced.sliced_plan', lambda: dict(X=X(), Y=Y(), a=w(10), b=w(8), n_projections=6, seed=0),
             clouds | weights | {'n_projections': 'size', 'kind': 'choice', 'p': 'positive', 'seed': 'seed', 'sparse': 'bool'}),
        Spec('sliced.sliced_plan', lambda: dict(X=X(), Y=Y(), projections=th()), {'projections': 'tensor'}),
        Spec('sliced.sliced_barycenter', lambda: dict(clouds=[X(), Y()], weights=w(2), n_support=6, n_projections=4,
                                                      n_iters=2, seed=0, show_progress=False),
             {'clouds': 'module',                       # not a list of clouds: a string, a number
              'weights': 'tensor', 'n_support': 'size', 'seed': 'seed', 'n_projections': 'size', 'n_iters': 'count',
              'lr': 'positive', 'show_progress': 'bool'}),
        Spec('sliced.sliced_wasserstein_sphere', sph,
             clouds | weights | {'p': 'positive', 'n_projections': 'size', 'seed': 'seed'}),
        Spec('sliced.sliced_wasserstein_sphere', lambda: dict(sph(), projections=torch.linalg.qr(_t(4, 3, 2, seed=27))[0].contiguous()),
             {'projections': 'tensor'}),
        Spec('sliced.sample_prior', lambda: dict(kind='ring', n=5, dim=2, seed=0),
             {'kind': 'choice', 'n': 'size', 'dim': 'size', 'seed': 'seed'}),
        Spec('sliced.SWAE', lambda: dict(data_dim=6, latent_dim=2, hidden=8, seed=0),
             {'data_dim': 'size', 'latent_dim': 'size', 'hidden': 'size', 'prior': 'choice', 'seed': 'seed'}),
        Spec('sliced.SWAE.forward', lambda: dict(x=_t(5, 6, seed=28)), {'x': 'tensor'}, call=lambda **kw: swae()(**kw),
             accept={'x': {'empty'}}),                  # no rows: empty reconstructions and codes
        Spec('sliced.SWAE.fit', lambda: dict(data=_t(5, 6, seed=28), n_epochs=1, batch_size=4, n_projections=4, seed=0,
                                             show_progress=False),
             {'data': 'tensor', 'n_epochs': 'size', 'batch_size': 'size', 'lr': 'positive', 'sw_weight': 'nonneg',
              'n_projections': 'size', 'seed': 'seed', 'show_progress': 'bool'},
             call=lambda **kw: swae().fit(**kw), accept={'batch_size': {'huge'}}),   # batches of min(batch_size, N) rows
        Spec('sliced.SWAE.sample', lambda: dict(n=5, seed=0), {'n': 'size', 'seed': 'seed'},
             call=lambda **kw: swae().sample(**kw)),
    ]

class _Lazy(dict):
    "Specs are built on first use (in the child process), module by module."
    builders = {'core': _core_specs, 'book': _book_specs, 'coding_rate': _coding_rate_specs, 'rg_flow': _rg_flow_specs, 'feature_learning': _feature_learning_specs, 'attention': _attention_specs, 'ntk': _ntk_specs, 'sliced': _sliced_specs}
    def get(self, module, default=None):
        if module not in self and module in self.builders: self[module] = self.builders[module]()
        return super().get(module, default)

SPECS = _Lazy()

# exported callables the sweep leaves out, and why
EXEMPT = {
    'core.QuadratureWarning': 'a warning class',
    'sliced.ASWScaleWarning': 'a warning class',
    'sliced.PACRoundingWarning': 'a warning class',
    'book.run_long': 'takes no arguments',
    'book.use_book_style': 'takes no arguments',
    'book.cuda_cell': 'takes no arguments',
    'rg_flow.NAMED_ACTIVATIONS': 'a dict of Activation objects',
    'feature_learning.PARAMETERIZATIONS': 'a dict of exponents',
    'sliced.PACBound': 'a result type (namedtuple)',
    'sliced.SliceDistribution': 'a result type (namedtuple)',
    'sliced.SlicedPlan': 'a result type (namedtuple)',
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
