"""Deep supervision: a loss on the decoder's coarser outputs too, as nnU-Net trains.

nnU-Net (Isensee et al., Nature Methods 2021) adds a 1x1 segmentation head to every decoder
resolution but the lowest and sums the losses against the labels downsampled to each, with
weights halving per resolution, normalised to 1. The extra gradient reaches the decoder's
early stages directly.

Here the heads hang on the network from outside, through forward hooks on its decoder stages,
so the network, its saved weights and prediction stay as they are: the heads train beside it,
are checkpointed for ``--resume``, and are dropped when the model is shipped.

Example:
    >>> from medlens.models.lite_unet import Lite0UNet
    >>> net = Lite0UNet(in_channels=3, out_channels=2, pretrained=False)
    >>> supervised = DeepSupervision(net, out_channels=2, patch_size=(64, 64), in_channels=3)
    >>> [tuple(o.shape[-2:]) for o in supervised(torch.zeros(2, 3, 64, 64))]
    [(64, 64), (16, 16), (8, 8)]
    >>> [round(w, 3) for w in supervised.weights]
    [0.571, 0.286, 0.143]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def decoder_stages(network: nn.Module) -> list[nn.Module]:
    """The decoder stages that get an extra head, finest first: all but the finest (which
    feeds the network's own head) and the coarsest (which nnU-Net leaves out too)."""
    from monai.networks.nets import DynUNet

    from medlens.models.lite_unet import LiteUNet

    if isinstance(network, LiteUNet):
        stages = list(network.decoders)  # coarsest first
    elif isinstance(network, DynUNet):
        stages = list(network.upsamples)  # coarsest first
    else:
        raise TypeError(f"deep supervision does not know the decoder of {type(network).__name__}")
    return list(reversed(stages[1:-1]))


class DeepSupervision(nn.Module):
    """``network`` plus 1x1 heads on its decoder stages; ``forward`` returns the network's
    logits followed by each head's (finest first), at their own resolution.

    Args:
        network: a ``LiteUNet`` or MONAI ``DynUNet`` (not wrapped in DDP).
        out_channels: classes, as the network's head.
        patch_size: a training patch's spatial size, to find the stages' channel counts.
        in_channels: the network's input channels.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        out_channels: int,
        patch_size: Sequence[int],
        in_channels: int,
    ) -> None:
        super().__init__()
        self.network = network
        self._stages = decoder_stages(network)
        if not self._stages:
            raise ValueError("the network has no decoder stage to supervise besides its head")
        self._captured: list[torch.Tensor | None] = [None] * len(self._stages)
        # hooks record only inside this module's forward: copies of the network (the EMA's
        # deepcopy keeps the hooks) and its validation passes must not leave activations here
        self._capturing = False
        for index, stage in enumerate(self._stages):
            stage.register_forward_hook(self._capture(index))
        channels = self._stage_channels(patch_size, in_channels)
        convolution = nn.Conv3d if len(patch_size) == 3 else nn.Conv2d
        self.heads = nn.ModuleList(convolution(c, out_channels, 1) for c in channels)
        self.heads.to(next(network.parameters()).device)
        # nnU-Net: 1, 1/2, 1/4, ... for the network's output and each finer-to-coarser head
        raw = [0.5**index for index in range(len(self._stages) + 1)]
        self.weights = [w / sum(raw) for w in raw]

    def _capture(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if self._capturing:
                self._captured[index] = output

        return hook

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The network's logits and its supervised stages' outputs (finest first)."""
        self._capturing = True
        try:
            logits = self.network(images)
        finally:
            self._capturing = False
        captured, self._captured = self._captured, [None] * len(self._stages)
        if any(t is None for t in captured):
            raise RuntimeError("a supervised decoder stage did not run in the forward pass")
        return logits, captured  # type: ignore[return-value]

    def _stage_channels(self, patch_size: Sequence[int], in_channels: int) -> list[int]:
        parameter = next(self.network.parameters())
        was_training = self.network.training
        self.network.eval()  # no batch-norm statistics from the probe
        with torch.no_grad():
            _, stages = self._run(torch.zeros(1, in_channels, *patch_size, device=parameter.device))
        self.network.train(was_training)
        return [int(t.shape[1]) for t in stages]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        logits, stages = self._run(images)
        return [logits, *(head(t) for head, t in zip(self.heads, stages, strict=True))]


class DeepSupervisionLoss(nn.Module):
    """``loss`` summed over deep-supervision outputs with ``weights``; the labels are
    downsampled to each output by nearest neighbour (nnU-Net's way).

    >>> from monai.losses import DiceCELoss
    >>> loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), [0.8, 0.2])
    >>> labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    >>> float(loss([torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)], labels)) > 0
    True
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(self, outputs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        total = outputs[0].new_zeros(())
        for weight, logits in zip(self.weights, outputs, strict=True):
            target = labels
            if logits.shape[2:] != labels.shape[2:]:
                target = F.interpolate(labels.float(), size=logits.shape[2:], mode="nearest")
                target = target.to(labels.dtype)
            total = total + weight * self.loss(logits.float(), target)
        return total
