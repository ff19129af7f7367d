"""Deploying QB-Norm: fit a :class:`~qbscale.Normaliser` once from a querybank,
then normalise new similarity rows (:mod:`~qbscale.retrieval.transform`) or
search new queries' embeddings exactly (:mod:`~qbscale.retrieval.search`) or
through a faiss index (:mod:`~qbscale.retrieval.faiss_index`).

Modules: :mod:`~qbscale.retrieval.normaliser` (the public ``Normaliser`` and
``normalise``), :mod:`~qbscale.retrieval.fitting` (its inputs: arrays, stores,
embeddings), :mod:`~qbscale.retrieval.transform`,
:mod:`~qbscale.retrieval.search`, :mod:`~qbscale.retrieval.faiss_index`.
"""
