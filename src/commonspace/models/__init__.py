"""Methods, created by name through :func:`commonspace.models.base.create`."""

from commonspace.models.base import MultimodalModel, Stage, available_models, create, register

__all__ = ["MultimodalModel", "Stage", "available_models", "create", "register"]
