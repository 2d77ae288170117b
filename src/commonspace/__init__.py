"""commonspace: joint representations of multimodal data."""

from commonspace.api import CommonSpace
from commonspace.data.dataset import Batch, DataError, MultimodalDataset, Standardizer
from commonspace.models.base import available_models, create

__version__ = "0.1.0"
__all__ = ["Batch", "CommonSpace", "DataError", "MultimodalDataset", "Standardizer", "available_models", "create"]
