"""The one data format: features per named modality, a presence mask, labels and named splits.

A missing modality is stored as zeros with ``mask=False``; models read the mask, never the zeros.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "DataError", "DataWarning", "MultimodalDataset", "Standardizer"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DISJOINT = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data; the message names the problem and the fix."""


def _as_tensor(x: object, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
        # torch rejects non-native byte order (big-endian .mat/HDF5 data) and wide unsigned ints
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
            arr = arr.astype(np.int64)
        return torch.as_tensor(arr)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot convert to an array ({exc}); pass a numpy array or tensor") from exc


_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_EXACT = 2 ** 24  # every integer up to this is exact in float32


class DataWarning(UserWarning):
    """Input that is used, but not exactly as given (the message says what is lost)."""


def _to_float32(t: Tensor, m: str) -> Tensor:
    """float32 features, refusing values float32 cannot hold and warning where integers lose precision."""
    if t.numel() == 0:
        return t.to(torch.float32)
    if t.is_floating_point() and t.dtype == torch.float64:
        big = torch.isfinite(t) & (t.abs() > _F32_MAX)
        if big.any():
            rows = torch.nonzero(big.reshape(t.shape[0], -1).any(1)).flatten()[:5].tolist()
            raise DataError(f"modality {m!r} has values up to {float(t[big].abs().max()):.3g}, beyond float32's "
                            f"range ({_F32_MAX:.3g}), which would overflow to inf (first rows {rows}); rescale the "
                            "features (e.g. log or divide by a constant) before loading")
    elif not t.is_floating_point() and t.dtype != torch.bool:
        peak = int(t.abs().max())
        if peak > _F32_EXACT:
            warnings.warn(f"modality {m!r} holds integers up to {peak}, above 2^24 = {_F32_EXACT}: float32 "
                          "cannot represent them all exactly, so precision is lost; rescale them if the low "
                          "digits matter", DataWarning, stacklevel=4)
    return t.to(torch.float32)


def _string_labels(x: object) -> bool:
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind is None and isinstance(x, list | tuple) and x:
        kind = "U" if isinstance(x[0], str | bytes) else None
    return kind in ("U", "S", "O")


@dataclass
class Batch:
    """A mini-batch as tensors. ``mask[:, j]`` says whether ``modalities[j]`` is present."""

    features: dict[str, Tensor]
    mask: Tensor
    modalities: tuple[str, ...]
    labels: Tensor | None = None
    index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def present(self, modality: str) -> Tensor:
        """Boolean (B,) presence of one modality."""
        return self.mask[:, self.modalities.index(modality)]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {k: v.to(device, non_blocking=True) for k, v in self.features.items()},
            self.mask.to(device),
            self.modalities,
            None if self.labels is None else self.labels.to(device),
            None if self.index is None else self.index.to(device),
        )

    def only(self, keep: Sequence[str]) -> Batch:
        """The same batch with every modality outside ``keep`` marked missing (zeroed)."""
        unknown = set(keep) - set(self.modalities)
        if unknown:
            raise DataError(f"unknown modalities {sorted(unknown)}; this batch has {list(self.modalities)}")
        mask = self.mask.clone()
        feats = dict(self.features)
        for j, m in enumerate(self.modalities):
            if m not in keep:
                mask[:, j] = False
                feats[m] = torch.zeros_like(feats[m])
        return Batch(feats, mask, self.modalities, self.labels, self.index)


@dataclass
class MultimodalDataset:
    """Paired features of several modalities with presence mask, labels and named splits.

    ``features``: name -> (N, d) or (N, C, H, W) array. ``mask``: bool (N, M) in ``modalities`` order
    (all present when omitted). ``labels``: int (N,) single-label or 0/1 (N, C) multi-label.
    ``splits``: name -> integer indices (train / val / test, or query / database / train).
    Validation runs on construction and raises :class:`DataError` with the fix.
    """

    features: Mapping[str, object]
    mask: object | None = None
    labels: object | None = None
    splits: Mapping[str, object] = field(default_factory=dict)
    name: str = "dataset"
    class_names: Sequence[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.features, Mapping) or not self.features:
            raise DataError("features must be a non-empty mapping of modality name -> array")
        feats: dict[str, Tensor] = {}
        n: int | None = None
        first = ""
        for m, x in self.features.items():
            if not isinstance(m, str) or not _NAME.match(m):
                raise DataError(
                    f"modality name {m!r} is not a valid name; use letters, digits, '_' or '-' "
                    "starting with a letter"
                )
            t = _as_tensor(x, f"modality {m!r}")
            if t.ndim not in (2, 4):
                raise DataError(
                    f"modality {m!r} has shape {tuple(t.shape)}; expected (N, d) vectors or (N, C, H, W) "
                    "feature maps (reshape 1-d data to (N, 1))"
                )
            if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                          torch.uint8, torch.bool)):
                raise DataError(f"modality {m!r} has dtype {t.dtype}; expected numbers")
            if any(d == 0 for d in t.shape[1:]):
                raise DataError(f"modality {m!r} has shape {tuple(t.shape)}, with no features; drop the modality "
                                "or give it at least one feature per sample")
            t = _to_float32(t, m)
            if n is None:
                n, first = int(t.shape[0]), m
            elif int(t.shape[0]) != n:
                raise DataError(
                    f"modality {m!r} has {t.shape[0]} samples but {first!r} has {n}; every modality needs "
                    "one row per sample (use the mask and zero rows for missing modalities)"
                )
            bad = ~torch.isfinite(t)
            if bad.any():
                rows = torch.nonzero(bad.reshape(t.shape[0], -1).any(1)).flatten()[:5].tolist()
                raise DataError(
                    f"modality {m!r} contains NaN or inf (first bad rows {rows}); impute or drop those values, "
                    "or mark the modality missing with mask=False and zeros"
                )
            feats[m] = t.contiguous()
        assert n is not None
        if n == 0:
            raise DataError("the dataset has no samples")
        self.features = feats
        self.modalities: tuple[str, ...] = tuple(feats)
        self.n = n

        if self.mask is None:
            mask = torch.ones(n, len(feats), dtype=torch.bool)
        else:
            mask = _as_tensor(self.mask, "mask")
            if mask.shape != (n, len(feats)):
                raise DataError(
                    f"mask has shape {tuple(mask.shape)}; expected ({n}, {len(feats)}) = (samples, modalities "
                    f"in order {list(self.modalities)})"
                )
            if mask.dtype != torch.bool:
                if not torch.all((mask == 0) | (mask == 1)):
                    raise DataError("mask must be boolean or 0/1")
                mask = mask.to(torch.bool)
        for j, m in enumerate(self.modalities):
            x = feats[m].reshape(n, -1)
            contradict = (~mask[:, j]) & (x != 0).any(1)
            if contradict.any():
                rows = torch.nonzero(contradict).flatten()[:5].tolist()
                raise DataError(
                    f"mask says modality {m!r} is missing for {int(contradict.sum())} samples (first {rows}) "
                    "but their features are not zero; zero those rows or set the mask to True"
                )
        self.mask = mask

        if self.labels is not None:
            if _string_labels(self.labels):
                sample = [str(v) for v in np.asarray(self.labels, dtype=object).reshape(-1)[:3]]
                raise DataError(f"labels are strings (e.g. {sample}); map them to integer class ids first: "
                                "names, y = numpy.unique(labels, return_inverse=True), then pass labels=y and "
                                "class_names=names")
            y = _as_tensor(self.labels, "labels")
            if y.ndim == 2 and y.shape[1] == 1 and y.dtype != torch.bool:
                y = y[:, 0]  # an integer column is a label vector (as MATLAB stores one); bool stays multi-label
            if y.ndim not in (1, 2) or y.shape[0] != n:
                raise DataError(
                    f"labels have shape {tuple(y.shape)}; expected ({n},) class ids or ({n}, C) 0/1 multi-label "
                    "indicators, one row per sample"
                )
            if y.is_floating_point():
                if not torch.all(torch.isfinite(y)) or not torch.all(y == torch.round(y)):
                    raise DataError("labels must be integers (class ids or 0/1 indicators), not real numbers")
            if y.ndim == 1:
                y = y.to(torch.int64)
                if (y < 0).any():
                    raise DataError("single-label class ids must be >= 0")
            else:
                if not torch.all((y == 0) | (y == 1)):
                    raise DataError("multi-label labels must be 0/1 indicators of shape (N, C)")
                y = y.to(torch.bool)
            self.labels = y
        splits: dict[str, Tensor] = {}
        for s, idx in dict(self.splits).items():
            t = _as_tensor(idx, f"split {s!r}")
            if t.dtype == torch.bool:
                if t.shape != (n,):
                    raise DataError(f"boolean split {s!r} must have shape ({n},)")
                t = torch.nonzero(t).flatten()
            if t.is_floating_point() and not torch.all(t == torch.round(t)):
                # a silent cast would truncate 1.5 -> 1 and address the wrong rows
                raise DataError(f"split {s!r} has non-integer indices; pass integer row indices")
            t = t.reshape(-1).to(torch.int64)
            if t.numel() == 0:
                raise DataError(f"split {s!r} is empty; give it at least one sample or leave it out")
            if t.min() < 0 or t.max() >= n:
                raise DataError(f"split {s!r} has indices outside [0, {n}); indices must address rows")
            if torch.unique(t).numel() != t.numel():
                raise DataError(f"split {s!r} lists some samples twice; remove the duplicates")
            splits[s] = t
        present = [s for s in _DISJOINT if s in splits]
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                if np.intersect1d(splits[a].numpy(), splits[b].numpy()).size:
                    raise DataError(f"splits {a!r} and {b!r} share samples; train/val/test must be disjoint")
        self.splits = splits

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return self.n

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per-modality feature shape without the sample axis."""
        return {m: tuple(x.shape[1:]) for m, x in self.features.items()}

    @property
    def empty_rows(self) -> Tensor:
        """Indices of rows with no modality present (they carry no data to train on, query or retrieve)."""
        return torch.nonzero(~self.mask.any(1)).flatten()

    @property
    def multilabel(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    @property
    def num_classes(self) -> int | None:
        if self.labels is None:
            return None
        return int(self.labels.shape[1]) if self.multilabel else int(self.labels.max()) + 1

    def split(self, name: str) -> Tensor:
        """Indices of a named split; raises with the available names."""
        if name not in self.splits:
            raise DataError(f"no split {name!r} in {self.name!r}; available: {sorted(self.splits)}")
        return self.splits[name]

    def check_modalities(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            # a bare string would be read as a sequence of one-letter names
            raise DataError(f"pass a list of modality names, e.g. [{names!r}], not a string")
        unknown = [m for m in names if m not in self.features]
        if unknown:
            raise DataError(f"unknown modalities {unknown}; {self.name!r} has {list(self.modalities)}")

    def batch(self, index: Tensor | Sequence[int] | None = None) -> Batch:
        """Gather rows directly from the in-memory tensors (no per-sample loop)."""
        if index is None:
            index = torch.arange(self.n)
        index = torch.as_tensor(index, dtype=torch.int64)
        return Batch(
            {m: x.index_select(0, index) for m, x in self.features.items()},
            self.mask.index_select(0, index),
            self.modalities,
            None if self.labels is None else self.labels.index_select(0, index),
            index,
        )

    def iter_batches(
        self,
        index: Tensor | str | None = None,
        batch_size: int = 256,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Mini-batches over a split name or index tensor."""
        if isinstance(index, str):
            index = self.split(index)
        elif index is None:
            index = torch.arange(self.n)
        if shuffle:
            index = index[torch.randperm(index.numel(), generator=generator)]
        for s in range(0, index.numel(), batch_size):
            yield self.batch(index[s:s + batch_size])

    def subset(self, index: Tensor | str, name: str | None = None) -> MultimodalDataset:
        """A new dataset holding only these rows (splits are dropped)."""
        if isinstance(index, str):
            name = name or f"{self.name}[{index}]"
            index = self.split(index)
        b = self.batch(index)
        return MultimodalDataset(b.features, b.mask, b.labels, {}, name or self.name, self.class_names,
                                 dict(self.meta))

    def select(self, modalities: Sequence[str]) -> MultimodalDataset:
        """Keep only some modalities (in the given order)."""
        self.check_modalities(modalities)
        cols = [self.modalities.index(m) for m in modalities]
        return MultimodalDataset({m: self.features[m] for m in modalities}, self.mask[:, cols], self.labels,
                                 self.splits, self.name, self.class_names, dict(self.meta))

    def replace(self, features: Mapping[str, Tensor] | None = None, mask: Tensor | None = None,
                splits: Mapping[str, Tensor] | None = None) -> MultimodalDataset:
        """A copy with some parts replaced (revalidated)."""
        return MultimodalDataset(dict(features if features is not None else self.features),
                                 self.mask if mask is None else mask, self.labels,
                                 dict(self.splits if splits is None else splits), self.name, self.class_names,
                                 dict(self.meta))

    def drop_modalities(self, fraction: float, split: str | None = None, seed: int = 0,
                        keep: str | None = None) -> MultimodalDataset:
        """Mark one modality missing for ``fraction`` of the samples in ``split`` (all rows if None).

        Each affected sample loses one modality chosen uniformly at random, never ``keep``; at least
        one modality always stays.
        """
        if not 0.0 <= fraction <= 1.0:
            raise DataError(f"fraction must be in [0, 1], got {fraction}")
        if len(self.modalities) < 2:
            raise DataError("dropping modalities needs at least two modalities")
        if keep is not None:
            self.check_modalities([keep])
        g = torch.Generator().manual_seed(seed)
        idx = self.split(split) if split else torch.arange(self.n)
        full = idx[self.mask[idx].all(1)]
        k = int(round(fraction * idx.numel()))
        if k > full.numel():
            raise DataError(f"cannot drop a modality from {k} samples: only {full.numel()} are complete")
        chosen = full[torch.randperm(full.numel(), generator=g)[:k]]
        choices = [j for j, m in enumerate(self.modalities) if m != keep]
        which = torch.tensor(choices)[torch.randint(len(choices), (k,), generator=g)]
        mask = self.mask.clone()
        mask[chosen, which] = False
        feats = {m: x.clone() for m, x in self.features.items()}
        for j, m in enumerate(self.modalities):
            rows = chosen[which == j]
            feats[m][rows] = 0
        return self.replace(feats, mask)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "samples": self.n,
            "modalities": {m: list(d) for m, d in self.dims.items()},
            "missing": {m: int((~self.mask[:, j]).sum()) for j, m in enumerate(self.modalities)},
            "labels": None if self.labels is None else ("multi" if self.multilabel else "single"),
            "classes": self.num_classes,
            "splits": {s: int(i.numel()) for s, i in self.splits.items()},
        }


class Standardizer:
    """Per-modality feature standardisation fitted on one split, over present samples only."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps
        self.mean: dict[str, Tensor] = {}
        self.std: dict[str, Tensor] = {}

    @classmethod
    def for_vectors(cls, data: MultimodalDataset, split: str = "train",
                    skip: Sequence[str] = ()) -> Standardizer | None:
        """Fitted on ``split`` when every modality is a feature vector, leaving ``skip`` alone; None when there
        is nothing to standardise (image-shaped features, or every modality skipped)."""
        if not data.features or not all(len(d) == 1 for d in data.dims.values()):
            return None
        if set(data.modalities) <= set(skip):
            return None
        return cls().fit(data, split, skip=skip)

    def fit(self, data: MultimodalDataset, split: str | None = "train",
            skip: Sequence[str] = ()) -> Standardizer:
        """Fit on ``split``; modalities in ``skip`` (read on their own scale, e.g. counts) are left as they are."""
        idx = data.split(split) if split else torch.arange(data.n)
        for j, m in enumerate(data.modalities):
            if m in skip:
                continue
            rows = idx[data.mask[idx, j]]
            if rows.numel() == 0:
                raise DataError(f"modality {m!r} is missing for every sample of split {split!r}; cannot fit")
            x = data.features[m].index_select(0, rows).reshape(rows.numel(), -1).double()
            self.mean[m] = x.mean(0).float()
            sd = x.std(0, unbiased=False).float()
            self.std[m] = torch.where(sd > self.eps, sd, torch.ones_like(sd))
        return self

    def transform(self, data: MultimodalDataset) -> MultimodalDataset:
        if not self.mean:
            raise DataError("Standardizer.transform called before fit")
        data.check_modalities(list(self.mean))
        feats = {}
        for j, m in enumerate(data.modalities):
            x = data.features[m]
            if m not in self.mean:
                feats[m] = x
                continue
            flat = x.reshape(x.shape[0], -1)
            if flat.shape[1] != self.mean[m].numel():
                raise DataError(f"modality {m!r} has {flat.shape[1]} features; the standardiser was fitted "
                                f"on {self.mean[m].numel()}")
            z = (flat - self.mean[m]) / self.std[m]
            z = z * data.mask[:, j:j + 1]  # missing stays zero
            feats[m] = z.reshape(x.shape)
        return data.replace(feats)

    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for m in self.mean:
            out[f"{m}.mean"] = self.mean[m]
            out[f"{m}.std"] = self.std[m]
        return out

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Standardizer:
        for k, v in state.items():
            m, kind = k.rsplit(".", 1)
            (self.mean if kind == "mean" else self.std)[m] = v
        return self
