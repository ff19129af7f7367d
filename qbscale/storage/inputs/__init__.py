"""Inputs: reading the files a user passes, row block by row block.

Similarity pickles through a restricted unpickler, ``.npy``/``.npz`` files
(:mod:`.readers`), and embedding matrices for search (:mod:`.gallery_rows`).

May import :mod:`qbscale.storage.layout`, :mod:`qbscale.storage.durability`
and this room.
"""
