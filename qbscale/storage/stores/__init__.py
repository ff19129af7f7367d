"""Stores: the experiment store, from ingest to saved results.

Ingest and its checked block writer (:mod:`.ingest`, :mod:`.writer`), opening
a store and its ground-truth and mask checks (:mod:`.store`), block sources the
engine reads (:mod:`.sources`), ``open_dataset`` (:mod:`.dataset`), saved run
results and resume (:mod:`.results`, :mod:`.resume`, :mod:`.resume_check`),
``qbscale check`` (:mod:`.check`), gallery banks and non-finite data
(:mod:`.gallery_bank`, :mod:`.finite`).

May import :mod:`qbscale.storage.layout`, the durability and inputs rooms, and
this room.
"""
