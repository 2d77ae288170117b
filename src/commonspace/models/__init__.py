"""Methods, created by name through :func:`commonspace.models.base.create`."""

# Importing the method modules registers them with the registry.
from commonspace.models import autoencoders, bidnn, cca, contrastive, cvs, dae, hashing, ima, raw, ssl, vae  # noqa: F401
from commonspace.models.base import MultimodalModel, Stage, available_models, create, register

__all__ = ["MultimodalModel", "Stage", "available_models", "create", "register"]
