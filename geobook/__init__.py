"""A literate, tested textbook of the geometry and theory of deep learning: NTK, RG flow, MCR², sliced Wasserstein and fused attention kernels.

Modules:

- `geobook.sliced`: Optimal transport between point clouds made cheap by slicing: sort one-dimensional projections instead of solving a linear program, and make the sort fast, bounded in memory and differentiable."""

__version__ = "0.1.0"
