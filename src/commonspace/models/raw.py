"""Raw-feature baselines of the BiDNN paper (Table 3): single modalities and their linear combination.

``raw`` is a model with no parameters whose common space is the original features; the linear combination of
unimodal similarities is a scoring function, because it mixes similarities rather than vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel, register
from commonspace.nn.mlp import masked_flat

__all__ = ["RawFeatures", "choose_weight", "linear_combination_scores"]


@register("raw")
class RawFeatures(MultimodalModel):
    """The original features as the representation (no parameters, nothing to fit).

    ``encode`` gives each modality's flattened features (missing rows zero); ``embed`` is the concatenation of
    the L2-normalised present modalities, a missing one contributing zeros. With the cosine metric, two samples
    that both have all M modalities then score the mean of the per-modality cosines.
    """

    trainable = False

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]]) -> None:
        super().__init__(dims)
        self.save_config()

    def fit_closed_form(self, data: MultimodalDataset, split: str = "train") -> None:
        """Nothing to fit; only checks that the data matches the model."""
        self.check_data(data)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        return {m: masked_flat(batch.features[m], batch.present(m)) for m in self.modalities}

    def embed(self, batch: Batch) -> Tensor:
        # normalize() maps an all-zero (missing) row to zeros, so missing modalities stay zero.
        return torch.cat([F.normalize(v, dim=1) for v in self.encode(batch).values()], dim=1)


def _similarity(q: Tensor, d: Tensor, metric: str) -> Tensor:
    q = q.reshape(q.shape[0], -1).to(torch.float32)
    d = d.reshape(d.shape[0], -1).to(torch.float32)
    if metric == "cosine":
        q, d = F.normalize(q, dim=1), F.normalize(d, dim=1)
    elif metric != "dot":
        raise ValueError(f"metric={metric!r}; choose 'cosine' or 'dot'")
    return q @ d.T


def linear_combination_scores(query: Mapping[str, Tensor], qmask: Tensor, db: Mapping[str, Tensor],
                              dbmask: Tensor, weight: float | Sequence[float], metric: str = "cosine",
                              missing_score: float = 0.0) -> Tensor:
    """Scores (Q, D) ``S = w S_a + (1 - w) S_b`` from unimodal similarities (BiDNN paper, Table 3 baseline).

    Modalities are taken in the order of ``query``'s keys; ``qmask`` (Q, M) and ``dbmask`` (D, M) give their
    presence in that order and ``db`` must have the same keys. ``weight`` is ``w`` for two modalities, or a
    sequence of M non-negative weights. For each pair only the modalities present on both sides count and the
    weights are renormalised over them: ``S = sum_m w_m a_m S_m / sum_m w_m a_m``. If the available
    modalities all have weight 0 (e.g. w = 1 and only modality b in common) their plain mean is used; if the
    pair shares no modality the score is ``missing_score`` (0: the cosine of unrelated vectors, so such pairs
    rank below any positive match without producing -inf in metrics).
    """
    names = list(query)
    if sorted(names) != sorted(db):
        raise DataError(f"query modalities {names} differ from database modalities {list(db)}")
    m = len(names)
    if isinstance(weight, int | float):
        if m != 2:
            raise ValueError(f"a scalar weight needs exactly two modalities, got {m}; pass {m} weights")
        ws = [float(weight), 1.0 - float(weight)]
    else:
        ws = [float(w) for w in weight]
        if len(ws) != m:
            raise ValueError(f"got {len(ws)} weights for {m} modalities")
    if any(w < 0 for w in ws):
        raise ValueError(f"weights must be non-negative, got {ws}")
    qmask, dbmask = torch.as_tensor(qmask).bool(), torch.as_tensor(dbmask).bool()
    if qmask.shape != (query[names[0]].shape[0], m) or dbmask.shape != (db[names[0]].shape[0], m):
        raise DataError(f"masks must be (Q, {m}) and (D, {m}) in the modality order {names}; got "
                        f"{tuple(qmask.shape)} and {tuple(dbmask.shape)}")
    num = wsum = plain = count = None
    for j, name in enumerate(names):
        s = _similarity(query[name], db[name], metric)
        avail = (qmask[:, j].reshape(-1, 1) & dbmask[:, j].reshape(1, -1)).to(s.dtype)
        s = s * avail  # a missing side's similarity is never read
        terms = (ws[j] * s, ws[j] * avail, s, avail)
        if num is None:
            num, wsum, plain, count = terms
        else:
            num, wsum, plain, count = (a + b for a, b in zip((num, wsum, plain, count), terms, strict=True))
    assert num is not None and wsum is not None and plain is not None and count is not None
    weighted = num / wsum.clamp_min(1e-12)
    fallback = torch.where(count > 0, plain / count.clamp_min(1.0), torch.full_like(plain, missing_score))
    return torch.where(wsum > 0, weighted, fallback)


def choose_weight(query: Mapping[str, Tensor], qmask: Tensor, db: Mapping[str, Tensor], dbmask: Tensor,
                  labels_q: Tensor, labels_db: Tensor,
                  metric_fn: Callable[[Tensor, Tensor, Tensor], float],
                  grid: Sequence[float] | np.ndarray = np.linspace(0.0, 1.0, 11), metric: str = "cosine",
                  ) -> tuple[float, dict[float, float]]:
    """Pick ``w`` on validation data: the grid value maximising ``metric_fn(scores, labels_q, labels_db)``.

    ``metric_fn`` is any retrieval metric (e.g. from ``commonspace.eval.retrieval``); ties go to the first
    (smallest) weight. Returns the best weight and every weight's value.
    """
    values: dict[float, float] = {}
    for w in grid:
        scores = linear_combination_scores(query, qmask, db, dbmask, float(w), metric)
        values[float(w)] = float(metric_fn(scores, labels_q, labels_db))
    if not values:
        raise ValueError("the weight grid is empty")
    best = max(values, key=lambda w: (values[w], -w))
    return best, values
