"""Durability: what keeps a user's data safe whatever fails.

Files written beside and renamed into place (:mod:`.atomic`, :mod:`.rename`),
stores built in a hidden sibling and published without replacing
(:mod:`.stage`, :mod:`.publish`), one writer at a time (:mod:`.lock`), chunk
manifests and seals checked on every read (:mod:`.manifest`, :mod:`.seal`,
:mod:`.integrity`), and what a path may be used for (:mod:`.paths`).

May import :mod:`qbscale.storage.layout` and this room only.
"""
