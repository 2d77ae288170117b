"""Modal-aware multimodal hashing (``mahash``) and the unimodal hashing baselines of its experiments
(``unihash``: DPSH, DSH, HashNet, DTH, CSQ, TextHash) on the same backbones. docs/methods_hashing.md has the
equations.

Both models output K-bit codes: a hashing head maps features to ``u`` (B, K); training uses a relaxation
(``tanh(u)``, or the method's own), ``hash_codes`` returns ``sign(u)`` as int8 in {-1, +1} and ``embed`` the
relaxed code, so float retrieval (cosine / Euclidean) works on the same representation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from commonspace.data.dataset import Batch, DataError, MultimodalDataset
from commonspace.losses.hashing import (
    TRIPLET_AVERAGES,
    csq_loss,
    dpsh_loss,
    dsh_loss,
    hashnet_loss,
    sign_codes,
    triplet_quant_loss,
)
from commonspace.models.base import MultimodalModel, register
from commonspace.nn.backbones import IMAGE_BACKBONES, ImageBackbone, TextBackbone
from commonspace.nn.fusion import FUSIONS, make_fusion
from commonspace.nn.modal_aware import InertKernelWarning, ModalAwareBlock, kernel_is_inert

__all__ = ["HashHead", "ModalAwareHashing", "UNIHASH_METHODS", "UnimodalHashing", "modality_roles"]

#: the paper gives no optimiser settings; Adam with lr 1e-3 and batches of 64 (enough in-batch triplets)
_ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64}

UNIHASH_METHODS = ("dpsh", "dsh", "hashnet", "dth", "csq", "texthash")
#: each method's regulariser weight when ``reg_weight`` is None (see the docs for where each comes from)
_REG_DEFAULT = {"dpsh": 0.1, "dsh": 0.01, "hashnet": 0.0, "dth": 0.01, "csq": 1e-4, "texthash": 0.01}


def modality_roles(dims: Mapping[str, tuple[int, ...]], image_modality: str | None = None,
                   text_modality: str | None = None) -> tuple[str, str]:
    """``(image, text)`` names of a two-modality ``dims``.

    Explicit names win; otherwise the one modality with (C, H, W) maps is the image; with none (two vector
    modalities) the first key of ``dims`` is the image (read as d x 1 x 1 maps) and the second the text.
    """
    names = list(dims)
    if len(names) != 2:
        raise DataError(f"modal-aware hashing needs exactly two modalities (image, text); got {names}")
    for given in (image_modality, text_modality):
        if given is not None and given not in dims:
            raise DataError(f"unknown modality {given!r}; dims has {names}")
    if image_modality is not None or text_modality is not None:
        img = image_modality if image_modality is not None else next(m for m in names if m != text_modality)
        txt = text_modality if text_modality is not None else next(m for m in names if m != img)
        if img == txt:
            raise DataError(f"image_modality and text_modality are both {img!r}")
    else:
        maps = [m for m in names if len(dims[m]) == 3]
        if len(maps) == 2:
            raise DataError(f"both modalities {names} are feature maps; the text modality must be a vector")
        img = maps[0] if maps else names[0]
        txt = next(m for m in names if m != img)
    if len(dims[txt]) != 1:
        raise DataError(f"the text modality {txt!r} must be (d,) vectors, got shape {dims[txt]}")
    return img, txt


class HashHead(nn.Module):
    """Joint representation -> ``u`` (B, K): one linear layer (``hidden=0``) or linear-ReLU-linear, then (``norm``)
    a batch normalisation of each bit.

    ``norm`` *(ours)*: ReLU features share a large common component, so at initialisation every sample's ``u``
    sits near the same vertex (per-bit spread 0.07 around an offset of 0.12 on two-digits); the triplet gradient
    scales with code differences and is 80x smaller than the quantization penalty's, which then drives all codes
    to that vertex within one epoch. Normalising each bit over the batch centres the codes (balanced bits from
    the start) and keeps the triplet term in charge; the affine part can learn any offset and scale back.
    """

    def __init__(self, in_dim: int, bits: int, hidden: int = 0, norm: bool = True) -> None:
        super().__init__()
        if int(bits) < 1:
            raise DataError(f"bits must be positive, got {bits}")
        layers: list[nn.Module] = []
        if int(hidden) > 0:
            layers += [nn.Linear(int(in_dim), int(hidden)), nn.ReLU(inplace=True)]
            in_dim = int(hidden)
        layers.append(nn.Linear(int(in_dim), int(bits)))
        if norm:
            layers.append(nn.BatchNorm1d(int(bits)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _zero_missing(x: Tensor, present: Tensor) -> Tensor:
    # where(), not a product: garbage (even NaN) in a missing row must not leak
    return torch.where(present.reshape(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))


def _rowmask(present: Tensor, x: Tensor) -> Tensor:
    return present.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _labels(batch: Batch) -> Tensor:
    if batch.labels is None:
        raise DataError("hashing models are supervised: the batch has no labels; give the dataset labels")
    return batch.labels


def _check_average(average: str) -> None:
    if average not in TRIPLET_AVERAGES:
        raise DataError(f"triplet_average={average!r}; choose 'active' or 'all'")


def _check_image_backbone(kind: str, shape: tuple[int, ...], modality: str) -> None:
    if kind not in IMAGE_BACKBONES:
        raise DataError(f"image_backbone={kind!r}; choose one of {list(IMAGE_BACKBONES)}")
    if kind != "maps" and len(shape) != 3:
        raise DataError(f"image_backbone={kind!r} needs raw (C, H, W) images in modality {modality!r}, got shape "
                        f"{shape}; use image_backbone='maps' for feature vectors")


@register("mahash")
class ModalAwareHashing(MultimodalModel):
    """Modal-aware multimodal hashing (paper Fig. 5): two image stages and two text fc layers, a modal-aware
    operation (KN + AN) after each, GAP of the image map, fusion, hashing head, triplet ranking loss.

    Hyper-parameters: ``bits`` (32), ``fusion`` ("concat" | "gmu" | "mcb"), ``use_kn`` / ``use_an`` (True; the
    ablations w/o KN, w/o AN), ``image_backbone`` ("maps" | "smallcnn" | "resnet18"), ``image_width`` (None:
    256 / 128 / 512), ``text_widths`` ([512, 512]), ``kernel_width`` (None: half the image channels),
    ``attention_reduction`` (16), ``gmu_width`` (512), ``mcb_dim`` (16000), ``head_hidden`` (0: one linear
    layer), ``head_norm`` (True: batch-normalised bits, see :class:`HashHead`), ``margin`` (0.25 of the bits,
    in relaxed Hamming distance), ``quant_weight`` (0.01),
    ``triplet_average`` ("active": the triplet loss's mean over margin-violating triplets, or "all"),
    ``image_modality`` / ``text_modality`` (None: inferred, see :func:`modality_roles`), ``seed`` (0: the MCB
    sketches).

    With ``use_kn`` on an image whose intermediate maps are 1 x 1 (a (d,) vector or a d x 1 x 1 map with
    ``image_backbone="maps"``) KN's kernel is constant: the model warns (:class:`InertKernelWarning`) and sets
    ``kn_inert``; KN then only adds ``W_z g(x)`` to the image and the pooled ``W_u g(x)`` to the text.
    """

    train_defaults = dict(_ADAM)
    supervised = True

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], bits: int = 32,
                 fusion: str = "concat", use_kn: bool = True, use_an: bool = True, image_backbone: str = "maps",
                 image_width: int | None = None, text_widths: Sequence[int] = (512, 512),
                 kernel_width: int | None = None, attention_reduction: int = 16, gmu_width: int = 512,
                 mcb_dim: int = 16000, head_hidden: int = 0, head_norm: bool = True, margin: float = 0.25,
                 quant_weight: float = 0.01, triplet_average: str = "active", image_modality: str | None = None,
                 text_modality: str | None = None, seed: int = 0) -> None:
        super().__init__(dims)
        self.image_modality, self.text_modality = modality_roles(self.dims, image_modality, text_modality)
        _check_image_backbone(image_backbone, self.dims[self.image_modality], self.image_modality)
        if fusion not in FUSIONS:
            raise DataError(f"fusion={fusion!r}; choose one of {list(FUSIONS)}")
        if float(margin) < 0 or float(quant_weight) < 0:
            raise DataError(f"margin and quant_weight must be >= 0, got {margin} and {quant_weight}")
        _check_average(triplet_average)
        self.save_config(bits=int(bits), fusion=fusion, use_kn=bool(use_kn), use_an=bool(use_an),
                         image_backbone=image_backbone, image_width=None if image_width is None else int(image_width),
                         text_widths=[int(w) for w in text_widths],
                         kernel_width=None if kernel_width is None else int(kernel_width),
                         attention_reduction=int(attention_reduction), gmu_width=int(gmu_width), mcb_dim=int(mcb_dim),
                         head_hidden=int(head_hidden), head_norm=bool(head_norm), margin=float(margin),
                         quant_weight=float(quant_weight), triplet_average=triplet_average,
                         image_modality=image_modality, text_modality=text_modality, seed=int(seed))
        self.image = ImageBackbone(image_backbone, self.dims[self.image_modality], image_width)
        # the dry forward pass that measures the maps is only needed when KN is on
        sizes = self.image.stage_sizes() if use_kn else ()
        #: True when KN is on but a stage's map has one position (its kernel is then constant)
        self.kn_inert = any(kernel_is_inert(h, w) for h, w in sizes)
        if self.kn_inert:
            warnings.warn(f"the kernel network cannot act on modality {self.image_modality!r}: its intermediate maps "
                          f"are {sizes[0][0]} x {sizes[0][1]} and {sizes[1][0]} x {sizes[1][1]}, and on a 1 x 1 map "
                          "the kernel is constant; give (C, H, W) maps with H W > 1 (or raw images with "
                          "image_backbone='smallcnn' / 'resnet18'), or use use_kn=False",
                          InertKernelWarning, stacklevel=2)
        self.text = TextBackbone(self.dims[self.text_modality][0], text_widths)
        blocks = [ModalAwareBlock(c, d, use_kn, use_an, kernel_width, attention_reduction)
                  for c, d in zip(self.image.channels, self.text.dims, strict=True)]
        self.ma1, self.ma2 = blocks
        self.fusion = make_fusion(fusion, self.image.channels[1], self.text.dims[1], gmu_width, mcb_dim, seed)
        self.head = HashHead(self.fusion.out_dim, bits, head_hidden, head_norm)

    # ------------------------------------------------------------ forward
    def _presence(self, batch: Batch, keep: str | None = None) -> tuple[Tensor, Tensor]:
        pv, pt = batch.present(self.image_modality), batch.present(self.text_modality)
        if keep == self.image_modality:
            pt = torch.zeros_like(pt)
        elif keep == self.text_modality:
            pv = torch.zeros_like(pv)
        return pv, pt

    def intermediate(self, batch: Batch, keep: str | None = None) -> tuple[Tensor, Tensor]:
        """The two modal-aware features after the second operation: image map (B, C2, H2, W2), text (B, D2).

        ``keep``: use only this modality (the other is treated as missing). Missing modalities are zero at every
        layer (their rows are zeroed after each stage), so they add nothing to the other through KN or AN.
        """
        pv, pt = self._presence(batch, keep)
        x = _zero_missing(self.image.prepare(batch.features[self.image_modality]), pv)
        t = _zero_missing(batch.features[self.text_modality], pt)
        f = self.image.stage1(x) * _rowmask(pv, x)
        s = self.text.fc1(t) * _rowmask(pt, t)
        f, s = self.ma1(f, s, pv, pt)
        f = self.image.stage2(f) * _rowmask(pv, f)
        s = self.text.fc2(s) * _rowmask(pt, s)
        return self.ma2(f, s, pv, pt)

    def logits(self, batch: Batch, keep: str | None = None) -> Tensor:
        """``u`` (B, K): GAP of the image map, fusion with the text feature, hashing head."""
        f, s = self.intermediate(batch, keep)
        return self.head(self.fusion(f.mean(dim=(2, 3)), s))

    # ----------------------------------------------------------- contract
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """``triplet + quant_weight * quant`` on ``b = tanh(u)`` over the samples with any modality present."""
        labels = _labels(batch)
        b = torch.tanh(self.logits(batch))
        keep = batch.mask.any(1)
        if not bool(keep.all()):
            b, labels = b[keep], labels[keep]
        return triplet_quant_loss(b, labels, self.config["margin"], self.config["quant_weight"],
                                  self.config.get("triplet_average", "active"))

    def embed(self, batch: Batch) -> Tensor:
        """The relaxed code ``tanh(u)`` (B, K) from the present modalities."""
        return torch.tanh(self.logits(batch))

    @torch.no_grad()
    def hash_codes(self, batch: Batch) -> Tensor:
        """``sign(u)`` as int8 (B, K) in {-1, +1}."""
        return sign_codes(self.logits(batch))

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Relaxed codes from each modality alone (the other zeroed and masked out).

        Meaningful for concat and GMU fusion; with MCB a single modality gives the zero bilinear vector, hence the
        same code for every sample.
        """
        return {m: torch.tanh(self.logits(batch, keep=m)) for m in (self.image_modality, self.text_modality)}


@register("unihash")
class UnimodalHashing(MultimodalModel):
    """Unimodal deep hashing baselines on the mahash backbones: one modality -> backbone -> GAP -> head.

    ``method``: "dpsh" | "dsh" | "hashnet" | "dth" | "csq" | "texthash" (TextHash: the mahash triplet loss on
    the text modality). ``modality``: the modality hashed (None: the text modality for texthash, else the image
    modality; roles as in :func:`modality_roles`, a lone vector modality counts as text). Other hyper-parameters:
    ``bits`` (32), ``image_backbone``, ``image_width``, ``text_widths``, ``head_hidden``, ``head_norm`` as for mahash;
    ``reg_weight`` (None: the method's default: DPSH eta 0.1, DSH alpha 0.01, DTH/TextHash quantisation 0.01,
    CSQ lambda 1e-4), ``margin`` and ``triplet_average`` (DTH/TextHash, as for mahash), ``num_classes`` (CSQ
    centres; needed only for single-label data with more than 2K classes), ``hashnet_gamma`` (0.005:
    ``beta = sqrt(1 + gamma step)``), ``seed`` (0: CSQ's random centres and tie-breaker).
    """

    train_defaults = dict(_ADAM)
    supervised = True

    @classmethod
    def hparams_from_data(cls, data: MultimodalDataset) -> dict[str, Any]:
        """``num_classes`` (CSQ's centres) from single-label data; multi-label CSQ reads it off the label rows."""
        if data.labels is None or data.multilabel:
            return {}
        return {"num_classes": int(data.num_classes)}

    def __init__(self, dims: Mapping[str, int | tuple[int, ...] | list[int]], method: str = "dpsh",
                 modality: str | None = None, bits: int = 32, image_backbone: str = "maps",
                 image_width: int | None = None, text_widths: Sequence[int] = (512, 512), head_hidden: int = 0,
                 head_norm: bool = True, reg_weight: float | None = None, margin: float = 0.25,
                 triplet_average: str = "active",
                 num_classes: int | None = None, hashnet_gamma: float = 0.005, seed: int = 0,
                 image_modality: str | None = None, text_modality: str | None = None) -> None:
        super().__init__(dims)
        if method not in UNIHASH_METHODS:
            raise DataError(f"method={method!r}; choose one of {list(UNIHASH_METHODS)}")
        role = self._role(method, modality, image_modality, text_modality)
        if role == "image":
            _check_image_backbone(image_backbone, self.dims[self.modality], self.modality)
        elif len(self.dims[self.modality]) != 1:
            raise DataError(f"{method} hashes modality {self.modality!r} with the text backbone, which needs (d,) "
                            f"vectors; got shape {self.dims[self.modality]}")
        reg = _REG_DEFAULT[method] if reg_weight is None else float(reg_weight)
        if reg < 0 or float(margin) < 0:
            raise DataError(f"reg_weight and margin must be >= 0, got {reg_weight} and {margin}")
        _check_average(triplet_average)
        self.role = role
        self.save_config(method=method, modality=modality, bits=int(bits), image_backbone=image_backbone,
                         image_width=None if image_width is None else int(image_width),
                         text_widths=[int(w) for w in text_widths], head_hidden=int(head_hidden),
                         head_norm=bool(head_norm), reg_weight=None if reg_weight is None else float(reg_weight),
                         margin=float(margin),
                         triplet_average=triplet_average, num_classes=None if num_classes is None else int(num_classes),
                         hashnet_gamma=float(hashnet_gamma), seed=int(seed), image_modality=image_modality,
                         text_modality=text_modality)
        self.method, self.reg = method, reg
        if role == "image":
            self.image = ImageBackbone(image_backbone, self.dims[self.modality], image_width)
            out = self.image.channels[1]
        else:
            self.text = TextBackbone(self.dims[self.modality][0], text_widths)
            out = self.text.dims[1]
        self.head = HashHead(out, bits, head_hidden, head_norm)
        if method == "hashnet":
            # continuation step count, saved with the weights so a resumed run continues the schedule
            self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def _role(self, method: str, modality: str | None, image_modality: str | None,
              text_modality: str | None) -> str:
        if len(self.dims) == 1:
            only = self.modalities[0]
            if modality not in (None, only):
                raise DataError(f"unknown modality {modality!r}; dims has {[only]}")
            self.modality = only
            return "image" if len(self.dims[only]) == 3 and method != "texthash" else "text"
        img, txt = modality_roles(self.dims, image_modality, text_modality)
        if modality is None:
            modality = txt if method == "texthash" else img
        if modality not in self.dims:
            raise DataError(f"unknown modality {modality!r}; dims has {list(self.dims)}")
        self.modality = modality
        return "text" if method == "texthash" or modality == txt else "image"

    # ------------------------------------------------------------ forward
    def logits(self, batch: Batch) -> Tensor:
        """``u`` (B, K) from the hashed modality (rows where it is missing are computed from zeros)."""
        x = _zero_missing(batch.features[self.modality], batch.present(self.modality))
        if self.role == "image":
            f = self.image.stage2(self.image.stage1(self.image.prepare(x))).mean(dim=(2, 3))
        else:
            f = self.text.fc2(self.text.fc1(x))
        return self.head(f)

    def beta(self) -> float:
        """HashNet's continuation ``beta = sqrt(1 + gamma * step)`` (1 for the other methods)."""
        if self.method != "hashnet":
            return 1.0
        return float((1.0 + self.config["hashnet_gamma"] * float(self.steps)) ** 0.5)

    def relaxed(self, u: Tensor) -> Tensor:
        """``tanh(beta u)``: the code used by ``embed`` (beta = 1 except for HashNet)."""
        return torch.tanh(self.beta() * u)

    # ----------------------------------------------------------- contract
    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """The method's loss (docs/methods_hashing.md) over the samples where the hashed modality is present."""
        labels = _labels(batch)
        u = self.logits(batch)
        present = batch.present(self.modality)
        if not bool(present.all()):
            u, labels = u[present], labels[present]
        m = self.method
        if m == "dpsh":
            return dpsh_loss(u, labels, self.reg)
        if m == "dsh":
            return dsh_loss(u, labels, alpha=self.reg)
        if m == "csq":
            return csq_loss(u, labels, self.config["num_classes"], self.reg, self.config["seed"])
        if m == "hashnet":
            z = self.relaxed(u)
            if self.training:
                self.steps += 1
            return hashnet_loss(z, labels)
        # dth, texthash: the triplet ranking loss on tanh codes
        return triplet_quant_loss(torch.tanh(u), labels, self.config["margin"], self.reg,
                                  self.config.get("triplet_average", "active"))

    def embed(self, batch: Batch) -> Tensor:
        return self.relaxed(self.logits(batch))

    @torch.no_grad()
    def hash_codes(self, batch: Batch) -> Tensor:
        """``sign(u)`` as int8 (B, K) in {-1, +1}."""
        return sign_codes(self.logits(batch))

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The relaxed code of the one hashed modality."""
        return {self.modality: self.embed(batch)}

    def extra_repr(self) -> str:
        return f"method={self.method!r}, modality={self.modality!r}"
