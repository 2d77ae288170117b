"""A scikit-learn style facade for people who just have arrays: fit, transform, encode, save, load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import DataError, MultimodalDataset, Standardizer
from commonspace.models.base import MultimodalModel, create_for_data

__all__ = ["CommonSpace"]


class CommonSpace:
    """Learn a joint space from paired arrays.

    >>> cs = CommonSpace("bidnn", epochs=50).fit({"image": X_img, "text": X_txt}, labels=y)
    >>> Z = cs.transform({"image": X_img_new, "text": X_txt_new})   # joint vectors
    >>> per_modality = cs.encode({"image": X_img_new})               # only the image is present

    ``model`` is a registered model name; ``hparams`` are its hyper-parameters; the training keywords
    (``epochs``, ``lr``, ``batch_size``, ``optimizer``, ``seed``, ``patience``, ``out_dir``, ``progress``) go to
    :class:`commonspace.train.TrainConfig`. Features are standardised on the training rows unless
    ``standardize=False``.
    """

    _TRAIN_KEYS = ("epochs", "lr", "batch_size", "optimizer", "seed", "patience", "out_dir", "progress",
                   "weight_decay", "momentum", "device")

    def __init__(self, model: str = "bidnn", standardize: bool = True, **kwargs: Any) -> None:
        self.model_name = model
        self.standardize = standardize
        self.train_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in self._TRAIN_KEYS}
        self.train_kwargs.setdefault("progress", False)
        self.hparams = kwargs
        self.model_: MultimodalModel | None = None
        self.standardizer_: Standardizer | None = None
        self.history_: list[dict] = []

    # ------------------------------------------------------------------ data
    def _dataset(self, x: MultimodalDataset | Mapping[str, Any], mask: Any = None, labels: Any = None,
                 splits: Mapping[str, Any] | None = None) -> MultimodalDataset:
        if isinstance(x, MultimodalDataset):
            return x
        if not isinstance(x, Mapping):
            raise DataError("pass a dict of modality name -> (N, d) array, or a MultimodalDataset")
        if self.model_ is not None:
            unknown = [m for m in x if m not in self.model_.modalities]
            if unknown:
                raise DataError(f"unknown modalities {unknown}; the model was fitted on {list(self.model_.modalities)}")
            n = {int(np.shape(v)[0]) for v in x.values()}
            if len(n) != 1:
                raise DataError(f"modalities have different sample counts {sorted(n)}; give one row per sample")
            rows = n.pop()
            given = dict(x)
            feats, cols = {}, []
            for m in self.model_.modalities:
                if m in given:
                    feats[m] = given[m]
                    cols.append(np.ones(rows, dtype=bool) if mask is None else np.asarray(mask[m], dtype=bool))
                else:  # absent modality: zeros + mask False, the library's one convention
                    feats[m] = np.zeros((rows, *self.model_.dims[m]), dtype=np.float32)
                    cols.append(np.zeros(rows, dtype=bool))
            return MultimodalDataset(feats, np.stack(cols, 1), labels, splits or {})
        return MultimodalDataset(dict(x), mask, labels, splits or {})

    def _check_fitted(self) -> MultimodalModel:
        if self.model_ is None:
            raise DataError("this CommonSpace is not fitted yet; call fit(...) or CommonSpace.load(path)")
        return self.model_

    # ------------------------------------------------------------------- api
    def fit(self, x: MultimodalDataset | Mapping[str, Any], labels: Any = None, mask: Any = None,
            val_fraction: float = 0.1) -> CommonSpace:
        """Train on every row (a ``val_fraction`` of them held out for early stopping / validation loss)."""
        from commonspace.train import TrainConfig, Trainer

        data = self._dataset(x, mask, labels)
        if "train" not in data.splits:
            g = torch.Generator().manual_seed(int(self.train_kwargs.get("seed", 0)))
            perm = torch.randperm(data.n, generator=g)
            k = int(round(val_fraction * data.n))
            splits = {"train": perm[k:]} | ({"val": perm[:k]} if k > 0 else {})
            data = data.replace(splits=splits)
        # n_classes and the like come from the data when the caller did not give them
        self.model_ = create_for_data(self.model_name, data, init_seed=int(self.train_kwargs.get("seed", 0)),
                                      **self.hparams)
        if self.standardize:  # Bernoulli probabilities and word counts keep their scale
            self.standardizer_ = Standardizer.for_vectors(data, "train", skip=self.model_.unscaled_modalities())
            if self.standardizer_ is not None:
                data = self.standardizer_.transform(data)
        cfg = TrainConfig.for_model(self.model_, **self.train_kwargs)
        trainer = Trainer(self.model_, cfg, standardizer=self.standardizer_)
        self.history_ = trainer.fit(data, train="train", val="val" if "val" in data.splits else None)
        return self

    def _prepared(self, x: MultimodalDataset | Mapping[str, Any], mask: Any = None) -> MultimodalDataset:
        model = self._check_fitted()
        data = self._dataset(x, mask)
        if self.standardizer_ is not None:
            data = self.standardizer_.transform(data)
        model.check_data(data)
        return data

    def transform(self, x: MultimodalDataset | Mapping[str, Any], mask: Any = None) -> np.ndarray:
        """Joint vectors from whatever modalities each row has (``mask``: modality -> bool (N,))."""
        return self._check_fitted().embed_dataset(self._prepared(x, mask)).numpy()

    def encode(self, x: MultimodalDataset | Mapping[str, Any], mask: Any = None) -> dict[str, np.ndarray]:
        """Per-modality vectors in the common space (for cross-modal retrieval)."""
        enc: dict[str, Tensor] = self._check_fitted().encode_dataset(self._prepared(x, mask))
        given = set(x.modalities if isinstance(x, MultimodalDataset) else x)
        return {m: v.numpy() for m, v in enc.items() if m in given}

    def robustness(self, x: Mapping[str, Any], labels: Any, mask: Any = None, *,
                   train: tuple[Mapping[str, Any], Any] | None = None, subsets: Any = None,
                   drop_rates: tuple[float, ...] = (), ks: tuple[int, ...] = (10,), metric: str = "cosine",
                   seed: int = 0) -> dict:
        """Retrieval with the queries masked to each subset of modalities (:func:`commonspace.eval.robustness`):
        the rows of ``x`` query each other, the database keeping every modality they have; ``train=(x, labels)``
        adds the logistic probe of the joint embedding, fitted on those rows."""
        from commonspace.eval.robustness import robustness

        model = self._check_fitted()
        parts = [(x, labels, mask)] + ([] if train is None else [(train[0], train[1], None)])
        sets = [self._dataset(px, pm, np.asarray(py)) for px, py, pm in parts]
        n = [d.n for d in sets]
        feats = {m: torch.cat([d.features[m] for d in sets]) for m in model.modalities}
        lab = torch.cat([d.labels for d in sets]) if all(d.labels is not None for d in sets) else None
        idx = torch.arange(sum(n))
        splits = {"query": idx[:n[0]]} | ({"train": idx[n[0]:]} if train is not None else {})
        data = MultimodalDataset(feats, torch.cat([d.mask for d in sets]), lab, splits)
        if self.standardizer_ is not None:
            data = self.standardizer_.transform(data)
        return robustness(model, data, query="query", subsets=subsets, drop_rates=drop_rates, ks=ks,
                          probe_train="train" if train is not None else None, metric=metric, seed=seed)

    def fit_transform(self, x: MultimodalDataset | Mapping[str, Any], labels: Any = None,
                      mask: Any = None) -> np.ndarray:
        return self.fit(x, labels, mask).transform(x if not isinstance(x, Mapping) else dict(x))

    def save(self, path: str | Path) -> Path:
        """safetensors + JSON (never pickle)."""
        from commonspace.train.checkpoint import save_model

        return save_model(Path(path), self._check_fitted(), self.standardizer_,
                          meta={"facade": {"model": self.model_name, "standardize": self.standardize}})

    @classmethod
    def load(cls, path: str | Path) -> CommonSpace:
        from commonspace.train.checkpoint import load_model

        loaded = load_model(Path(path))
        facade = (loaded.meta or {}).get("facade", {})
        obj = cls(loaded.model.name, standardize=facade.get("standardize", loaded.standardizer is not None))
        obj.model_, obj.standardizer_ = loaded.model, loaded.standardizer
        return obj
