"""Shared measuring helpers for benchmarks/bench_*.py: medians of several runs, peak memory, machine info, JSON out.

Each benchmark script imports this module, times geobook side by side with its reference library in one run, and
writes `benchmarks/results/<name>.json`, which the chapters (and the performance page) read: numbers in the book are
never typed by hand.
"""
from __future__ import annotations
import gc, json, os, platform, statistics, threading, time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'
_LOAD_AT_START = os.getloadavg() if hasattr(os, 'getloadavg') else None   # the machine's load when the script began

def _rss_bytes() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def _hwm_bytes():
    "The kernel's peak resident size of this process since the last reset (VmHWM), or None where unavailable."
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return None

def _reset_hwm() -> bool:
    "Reset VmHWM to the current resident size (Linux >= 4.0: write 5 to /proc/self/clear_refs); True if it worked."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return _hwm_bytes() is not None
    except OSError: return False

# The same measurement as geobook.core.PeakMemory, kept here on purpose: bench_ntk runs this module inside the
# neural-tangents venv (.venv-nt), where neither geobook nor torch is installed.
class PeakRSS:
    """Context manager for the peak resident memory of this process above its level at entry; `.peak_mb`.

    On Linux the kernel's own high-water mark is reset at entry and read at exit, which is exact and also sees
    allocations made while a compiled kernel holds the GIL. Elsewhere a thread samples the resident size every
    `interval` s (which can miss short peaks). `.method` says which was used."""
    def __init__(self, interval: float = 0.0005): self.interval, self.peak, self._stop = interval, 0, threading.Event()
    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes()); time.sleep(self.interval)
    def __enter__(self):
        gc.collect(); self.start = _rss_bytes(); self.peak = self.start
        self.method = 'VmHWM' if _reset_hwm() else 'sampled'
        if self.method == 'sampled':
            self._t = threading.Thread(target=self._run, daemon=True); self._t.start()
        return self
    def __exit__(self, *exc):
        if self.method == 'sampled': self._stop.set(); self._t.join()
        else: self.peak = max(self.peak, _hwm_bytes())
        self.peak = max(self.peak, _rss_bytes())
    @property
    def peak_mb(self) -> float: return (self.peak - self.start) / 2**20

def measure(fn, repeats: int = 5, warmup: int = 1, cuda: bool = False) -> dict:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs, and peak extra memory of one run.

    With `cuda=True` the GPU is synchronised around each run and peak memory is torch's peak CUDA allocation."""
    sync = (lambda: __import__('torch').cuda.synchronize()) if cuda else (lambda: None)
    for _ in range(warmup): fn(); sync()
    times = []
    for _ in range(repeats):
        sync(); t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    if cuda:
        import torch
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated(); fn(); sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with PeakRSS() as m: fn()
        peak, method = m.peak_mb, m.method
    return {'median_s': statistics.median(times), 'min_s': min(times), 'runs': times, 'peak_mb': peak,
            'peak_method': 'torch.cuda.max_memory_allocated' if cuda else method}

def _version(pkg: str):
    try: return metadata.version(pkg)
    except metadata.PackageNotFoundError: return None

def _numpy_dispatch() -> dict:
    """Which of NumPy's AVX-512 kernels this process may use, and NPY_DISABLE_CPU_FEATURES: on AMD Zen 4 NumPy's AVX-512
    sort is slower than its AVX2 sort (a microcoded compress-store), so a sort-bound benchmark depends on it."""
    try: from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError: return {}
    return {'X86_V4': f.get('X86_V4'), 'AVX512_SKX': f.get('AVX512_SKX'), 'AVX512_ICL': f.get('AVX512_ICL'),
            'NPY_DISABLE_CPU_FEATURES': os.environ.get('NPY_DISABLE_CPU_FEATURES')}

def _commit() -> str | None:
    """The project's git commit, with '+changes' when its code (geobook/, benchmarks/ but not their results, untracked
    files included) differs from it; None outside a git checkout."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'geobook', 'benchmarks', ':(exclude)benchmarks/results'],
                               cwd=root, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError): return None
    return head + ('+changes' if dirty else '')

_COMMIT_AT_START = _commit()       # what the results measure: the code as it was when the script started

def machine_info(packages=('torch', 'numpy', 'numba', 'geobook')) -> dict:
    """The machine a result was measured on: CPU model and the SIMD flags that matter for these kernels, the cores this
    process may use, the load averages (1, 5, 15 min) when the script started and now, versions, date."""
    cpu, flags, vendor = platform.processor(), [], {}
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip()
            if line.startswith(('vendor_id', 'cpu family')): vendor.setdefault(line.split(':')[0].strip(), line.split(':', 1)[1].strip())
            if line.startswith('flags'):
                have = set(line.split(':', 1)[1].split())
                flags = sorted(f for f in have if f.startswith(('avx', 'fma', 'sse4', 'amx', 'f16c')))
                break
    except OSError: pass
    load_now = os.getloadavg() if hasattr(os, 'getloadavg') else None
    info = {'cpu': cpu, 'cpu_flags': flags, 'cores': os.cpu_count(),
            'usable_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
            'load_at_start': [round(x, 2) for x in _LOAD_AT_START] if _LOAD_AT_START else None,
            'load_at_end': [round(x, 2) for x in load_now] if load_now else None,
            'python': platform.python_version(), 'platform': platform.platform(),
            'date': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'versions': {p: _version(p) for p in packages}, 'commit': _COMMIT_AT_START, 'cpu_vendor': vendor,
            'numpy_dispatch': _numpy_dispatch()}
    try:
        import torch
        if torch.cuda.is_available(): info['gpu'] = torch.cuda.get_device_name(0)
    except ImportError: pass
    return info

def write_results(name: str, rows: list[dict], packages=('torch', 'numpy', 'numba', 'geobook'), **extra) -> Path:
    "Write `rows` (one dict per measurement) with machine info to benchmarks/results/<name>.json; return the path."
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f'{name}.json'
    memory = ('peak resident size above the start of one call: VmHWM, the kernel\'s high-water mark, reset per call'
              if _reset_hwm() else 'peak resident size above the start of one call, sampled every 0.5 ms')
    path.write_text(json.dumps({'benchmark': name, 'machine': machine_info(packages), 'memory': memory, 'rows': rows,
                                **extra}, indent=1) + '\n')
    print(f'wrote {path}')
    return path
