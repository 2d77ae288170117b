"""Data model, file I/O and builtin datasets."""

from commonspace.data.dataset import Batch, DataError, MultimodalDataset, Standardizer

__all__ = ["Batch", "DataError", "MultimodalDataset", "Standardizer"]
