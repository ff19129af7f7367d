"""The engine, on numpy (and numba for the bank's fused kernel): chunk arithmetic,
block kernels, reductions declared as data, the normalisation methods, bank
statistics and the lazy plan.

Nothing here imports zarr or fsspec or opens a file: sources hand it blocks.
"""
