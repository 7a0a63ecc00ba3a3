"""Datasets as arrays: the adapter contract (``adapter``), the prepared-dataset cache that
``bench prepare`` fills once (``prepared``, ``cache``) and the decoding and augmentation helpers of
the audio-visual recipes (``audio``, ``vision``).

The adapter types are importable from here, as adapters always have (``from bench.data import
DatasetAdapter, Modality, Split``).
"""

from bench.data.adapter import (
    DatasetAdapter,
    Modality,
    Split,
    batch_indices,
    stratified_split,
)

__all__ = ["DatasetAdapter", "Modality", "Split", "batch_indices", "stratified_split"]
