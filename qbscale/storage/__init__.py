"""Storage: everything that reads or writes files, in four rooms.

``layout``
    The names and attributes of an experiment store, and what a URL or a local
    path is: the vocabulary every room shares (imports no other storage module).
``durability``
    What keeps data safe: files written beside and renamed into place
    (``atomic``, ``rename``), where a store is built and published (``stage``,
    ``publish``), the store's lock, chunk manifests, seals and verified reads
    (``manifest``, ``seal``, ``integrity``), and what a path may be used for
    (``paths``).  Imports ``layout`` only.
``inputs``
    Reading the files a user passes: similarity pickles (a restricted
    unpickler), ``.npy``/``.npz``, embeddings by row block.  Imports
    ``layout`` and ``durability``.
``stores``
    The experiment store: ingest and its writer, opening and checking a store,
    block sources for the engine, saved run results and resume, ``check``,
    ``open_dataset``, gallery banks.  Imports the rooms above.
``outputs``
    What commands write besides a store: hits files in every format and
    fitted normalisers.  May import every other room.

The rooms' order is enforced by ``tests/test_layers.py``.
"""
