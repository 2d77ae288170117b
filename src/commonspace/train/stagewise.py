"""Stage-wise class learning (CVS thesis Sec. 3.4, Tables 12-13): a training procedure over class groups.

Stage k trains a model on the samples of class group k only, starting from stage k-1's weights. Any model
works; the CVS bench uses it for CVS / M-CVS / RVS.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from commonspace.data.dataset import DataError, MultimodalDataset
from commonspace.models.base import MultimodalModel
from commonspace.train.config import TrainConfig
from commonspace.train.trainer import Trainer

__all__ = ["class_stages", "train_stagewise"]


def class_stages(labels: Any, group_size: int, order: Sequence[int] | None = None) -> list[np.ndarray]:
    """Split the classes into groups of ``group_size`` for stage-wise learning (thesis Sec. 3.4, Table 12).

    ``labels``: (N,) class ids or (N, C) 0/1 rows. Classes are taken in ``order`` (a permutation of the classes
    that occur; default ascending); the last group may be smaller.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    present = np.unique(y) if y.ndim == 1 else np.flatnonzero(y.astype(bool).any(0))
    if int(group_size) < 1:
        raise DataError(f"group_size must be a positive integer, got {group_size}")
    if order is None:
        seq = np.sort(present)
    else:
        seq = np.asarray(list(order), dtype=np.int64)
        if sorted(seq.tolist()) != sorted(present.tolist()):
            raise DataError(f"order must be a permutation of the classes present in the labels {present.tolist()}, "
                            f"got {seq.tolist()}")
    k = int(group_size)
    return [seq[s:s + k].astype(np.int64) for s in range(0, len(seq), k)]


def _of_classes(y: Tensor, classes: np.ndarray) -> Tensor:
    c = torch.as_tensor(classes, dtype=torch.int64)
    return torch.isin(y, c) if y.ndim == 1 else y[:, c].bool().any(1)


def train_stagewise(model: MultimodalModel | Callable[[], MultimodalModel], data: MultimodalDataset,
                    groups: Sequence[Sequence[int]], config: Any = None, *, train: str = "train",
                    val: str | None = "val",
                    callback: Callable[[int, MultimodalModel, np.ndarray], None] | None = None,
                    keep_models: bool = True) -> list[MultimodalModel]:
    """Stage-wise class learning (Sec. 3.4): stage k trains the model (all its parameters, starting from stage
    k-1's weights) on the ``train`` samples of ``groups[k]`` only; ``val``, if present, is filtered alike.

    ``model`` is a model or a zero-argument factory; ``config`` a :class:`~commonspace.train.TrainConfig`
    (default: the model's ``train_defaults``); with an ``out_dir`` each stage writes to ``out_dir/classes<k>``.
    After stage k ``callback(k, model, seen_classes)`` runs (evaluate there); returns a copy of the model after
    every stage (``keep_models``) for evaluation on the first-stage classes and on all seen ones.
    """
    net = model if isinstance(model, MultimodalModel) else model()
    if data.labels is None:
        raise DataError("stage-wise class learning needs labels; the dataset has none")
    cfg = config if config is not None else TrainConfig.for_model(net)
    out: list[MultimodalModel] = []
    seen: list[int] = []
    for k, group in enumerate(groups):
        cls = np.asarray(list(group), dtype=np.int64)
        splits = dict(data.splits)
        idx = data.split(train)
        splits[train] = idx[_of_classes(data.labels[idx], cls)]
        if splits[train].numel() == 0:
            raise DataError(f"class group {k} {cls.tolist()} has no samples in split {train!r}")
        stage_val = None
        if val is not None and val in splits:
            keep = splits[val][_of_classes(data.labels[splits[val]], cls)]
            if keep.numel():
                splits[val], stage_val = keep, val
            else:
                del splits[val]
        stage_cfg = cfg.replace(out_dir=cfg.out_dir / f"classes{k + 1}") if cfg.out_dir is not None else cfg
        Trainer(net, stage_cfg).fit(data.replace(splits=splits), train=train, val=stage_val)
        seen += [c for c in cls.tolist() if c not in seen]
        if callback is not None:
            callback(k, net, np.asarray(seen, dtype=np.int64))
        if keep_models:
            out.append(copy.deepcopy(net))
    return out
