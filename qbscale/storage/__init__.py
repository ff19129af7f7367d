"""Storage: reading inputs (safe unpickler, npy/npz), Zarr stores (layout, block
sources, opening, writing with staging), ingest, saved results and resume.
"""
