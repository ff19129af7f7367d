"""Outputs: what commands write besides an experiment store.

Hits files in every format (:mod:`.hits`, :mod:`.hit_sinks`) and fitted
normalisers (:mod:`.normaliser_store`).

May import every other storage room.
"""
