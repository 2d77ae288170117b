"""Loss terms: the Semantic Similarity Learning penalties (SSL paper Eq. 1-3)."""

from commonspace.losses.similarity import (
    CE_GRADS,
    SIMILARITIES,
    canonical_correlations,
    cca_sim,
    cross_entropy_sim,
    similarity,
)

__all__ = ["CE_GRADS", "SIMILARITIES", "canonical_correlations", "cca_sim", "cross_entropy_sim", "similarity"]
