"""Feature-learning backbones for the hashing models (paper Fig. 2 A and Fig. 5), each split into two
intermediate layers so the modal-aware operation can sit after each.

Image (``ImageBackbone``), three kinds:

* ``"maps"``: user-supplied C x H x W feature maps (e.g. a frozen CNN's conv features); two 3x3 conv-BN-ReLU
  stages of ``width`` channels on top (stride 1: small maps keep their positions for the kernel network).
  A (d,) vector is read as a d x 1 x 1 map.
* ``"smallcnn"``: raw (1 or 3, H, W) images, trained end to end; stage 1 = two conv-BN-ReLU-maxpool blocks
  (width/4, width/2 channels), stage 2 = one more (width channels).
* ``"resnet18"``: ResNet-18 (He et al. 2016) from torch.nn only, randomly initialised; stage 1 = stem + conv2_x
  .. conv4_x, stage 2 = conv5_x (the paper uses Conv4_2 and Conv5_2 as the intermediate features).
  ``width`` is the conv5 width (512 in the original; the base width is width / 8).

Text (``TextBackbone``): two fully connected ReLU layers over bag-of-words or embeddings (the paper: "it only
has two fully connected layers for text modality").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from commonspace.data.dataset import DataError

__all__ = ["IMAGE_BACKBONES", "ImageBackbone", "TextBackbone", "image_shape"]

IMAGE_BACKBONES = ("maps", "smallcnn", "resnet18")
_DEFAULT_WIDTH = {"maps": 256, "smallcnn": 128, "resnet18": 512}


def image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """The (C, H, W) an image modality of this per-sample shape is read as ((d,) -> (d, 1, 1))."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 1:
        return (shape[0], 1, 1)
    raise DataError(f"an image modality needs (C, H, W) maps or (d,) vectors per sample, got shape {shape}")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.short(x)).relu()


def _res_layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1))


class ImageBackbone(nn.Module):
    """Two image stages; ``channels`` = (C1, C2), the widths of the two intermediate feature maps."""

    def __init__(self, kind: str, in_shape: Sequence[int], width: int | None = None) -> None:
        super().__init__()
        if kind not in IMAGE_BACKBONES:
            raise DataError(f"image_backbone={kind!r}; choose one of {list(IMAGE_BACKBONES)}")
        c, h, w = image_shape(in_shape)
        width = int(width) if width else _DEFAULT_WIDTH[kind]
        if width < 8:
            raise DataError(f"image width must be >= 8, got {width}")
        self.kind, self.in_shape = kind, (c, h, w)
        if kind == "maps":
            self.stage1 = nn.Sequential(*_conv_bn_relu(c, width))
            self.stage2 = nn.Sequential(*_conv_bn_relu(width, width))
            self.channels = (width, width)
        elif kind == "smallcnn":
            if c not in (1, 3):
                raise DataError(f"smallcnn expects raw (1 or 3, H, W) images, got {c} channels; use "
                                "image_backbone='maps' for feature maps")
            a, b = max(width // 4, 1), max(width // 2, 1)
            # ceil_mode: tiny images shrink to 1 x 1, never to 0 x 0
            self.stage1 = nn.Sequential(*_conv_bn_relu(c, a), nn.MaxPool2d(2, ceil_mode=True),
                                        *_conv_bn_relu(a, b), nn.MaxPool2d(2, ceil_mode=True))
            self.stage2 = nn.Sequential(*_conv_bn_relu(b, width), nn.MaxPool2d(2, ceil_mode=True))
            self.channels = (b, width)
        else:
            base = max(width // 8, 1)
            stem = [nn.Conv2d(c, base, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1)]
            self.stage1 = nn.Sequential(*stem, _res_layer(base, base, 1), _res_layer(base, 2 * base, 2),
                                        _res_layer(2 * base, 4 * base, 2))  # up to conv4_2
            self.stage2 = _res_layer(4 * base, 8 * base, 2)  # conv5_x, ends at conv5_2
            self.channels = (4 * base, 8 * base)

    def prepare(self, x: Tensor) -> Tensor:
        """Per-sample features -> (B, C, H, W)."""
        return x.reshape(x.shape[0], *self.in_shape)

    def stage_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((H1, W1), (H2, W2))``: the spatial sizes of the two intermediate maps, from one dry forward pass in
        eval mode (the training flag is restored; no parameter or BN statistic changes)."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, *self.in_shape)
                f1 = self.stage1(x)
                f2 = self.stage2(f1)
        finally:
            self.train(was)
        return (int(f1.shape[2]), int(f1.shape[3])), (int(f2.shape[2]), int(f2.shape[3]))


class TextBackbone(nn.Module):
    """Two fully connected ReLU layers ``d -> widths[0] -> widths[1]``; ``dims`` = the two layer widths."""

    def __init__(self, in_dim: int, widths: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 2 or min(widths) < 1:
            raise DataError(f"text_widths must be two positive widths (the paper's two fc layers), got {widths}")
        self.fc1 = nn.Sequential(nn.Linear(int(in_dim), widths[0]), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(inplace=True))
        self.dims = (widths[0], widths[1])
