"""A literate, tested textbook of the geometry and theory of deep learning: NTK, RG flow, MCR², sliced Wasserstein and fused attention kernels.

## Use the package

```python
import torch
from geobook.core import gaussian_expectation
K = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
gaussian_expectation(lambda u, v: torch.relu(u) * torch.relu(v), K)   # E[relu(u) relu(v)], (u, v) ~ N(0, K)
```

Functions take torch tensors (NumPy arrays are converted) and return tensors on the inputs' device and dtype; shapes
are stated in each docstring with the symbol from the chapter; functions that sample take a `seed`.

`pip install geobook` adds about 287 MB to an environment that has the CPU build of torch 2.13 (880 MB): llvmlite
and Numba 212 MB, NumPy 71 MB; no matplotlib, SciPy or numba-cuda unless you ask for the extras `book` (the figure
style and the chapters' checks: matplotlib, SciPy, SymPy) or `cuda` (numba-cuda). Measured by
`python tools/measure_install.py`, which installs both into fresh virtual environments and prints the sizes.

The package has one module per chapter, and the library imports only torch, NumPy, Numba (and its llvmlite), tqdm and
threadpoolctl:

- `geobook.core`: Gaussian expectations by Gauss–Hermite quadrature, seeds and generators, devices, input checks,
  progress bars.
- `geobook.ntk`: the NNGP and NTK of fully-connected networks (closed forms and quadrature), empirical NTKs, a
  network with exactly these kernels, kernel regression along the gradient flow.
- `geobook.rg_flow`: the layer-to-layer kernel flow, criticality and universality classes, the four-point vertex at
  finite width.
- `geobook.coding_rate`: the coding rate, MCR² and its loss, manifold linearizing and clustering (MLC), clustering
  metrics.
- `geobook.sliced`: one-dimensional optimal transport by sorting; sliced, max-sliced, generalized, distributional and
  augmented sliced Wasserstein distances; the sliced-Wasserstein autoencoder.
- `geobook.feature_learning`: abc-parameterisations of MLPs (standard, NTK, mean-field, μP) with per-layer learning
  rates for plain SGD and Adam, the coordinate check, feature and kernel movement, learning-rate sweeps for μTransfer.
- `geobook.attention`: fused FlashAttention-2 forward and backward passes and neighborhood attention in Numba, for the
  CPU (register-tiled micro-kernels on explicit SIMD vectors, faster than torch's SDPA on the CPU at N ≥ 4096 in the
  chapter's benchmark) and (with the `cuda` extra) the GPU, where neighborhood attention runs on tiles of 2-D patches
  and bfloat16, float16 and opted-in float32 (TF32) run on tensor cores through a linked CUDA C++ `mma` helper.
- `geobook.book`: what only the chapters use: the figure style, the long-cell switch, peak-memory measurement and the
  benchmark results (it needs the `book` extra; the library never imports it)."""

__version__ = "0.1.0"
