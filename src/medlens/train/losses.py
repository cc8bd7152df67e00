"""Segmentation losses beyond MONAI's DiceCE: the polyp literature's structure loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``--loss`` choices of ``medlens train seg``, as the model card describes them
LOSS_DESCRIPTIONS = {
    "dice-ce": "Dice + cross-entropy (MONAI DiceCELoss, batch Dice)",
    "structure": "structure loss: boundary-weighted cross-entropy + per-image weighted IoU "
    "(PraNet)",
}


class StructureLoss(torch.nn.Module):
    """Boundary-weighted cross-entropy plus a per-image weighted soft IoU (PraNet's loss).

    PraNet (Fan et al., MICCAI 2020) and many polyp segmenters since train with it: pixels whose
    neighbourhood mixes classes (the lesion boundary) weigh up to ``1 + boundary_weight``, and
    the IoU term is computed per image and class, so a small lesion counts as much as a large
    one, as in a per-image mean Dice. This version takes softmax logits of any number of
    classes (the two-class softmax equals PraNet's sigmoid) and 2D or 3D images.

    Args:
        kernel_fraction: neighbourhood size as a share of the shorter image side (PraNet's 31
            pixels at 352x352 is 0.088); rounded to an odd number of pixels, at least 3.
        boundary_weight: extra weight of a pixel whose whole neighbourhood is of other classes.

    >>> logits = torch.zeros(2, 2, 32, 32)
    >>> labels = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    >>> labels[:, :, 8:20, 8:20] = 1
    >>> loss = StructureLoss()
    >>> round(float(loss(logits, labels)), 3)  # p = 0.5 everywhere: log 2 plus a weighted IoU
    1.534
    >>> perfect = torch.stack([1 - labels[:, 0], labels[:, 0]], dim=1).float() * 20
    >>> float(loss(perfect, labels)) < 1e-3
    True
    """

    def __init__(self, *, kernel_fraction: float = 0.088, boundary_weight: float = 5.0) -> None:
        super().__init__()
        self.kernel_fraction = kernel_fraction
        self.boundary_weight = boundary_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (N, C, *spatial) against integer ``labels`` (N, 1, *spatial)."""
        classes = labels[:, 0].long()
        onehot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        foreground = onehot[:, 1:]
        kernel = max(3, int(round(self.kernel_fraction * min(logits.shape[2:]))) // 2 * 2 + 1)
        pool = F.avg_pool2d if logits.ndim == 4 else F.avg_pool3d
        # count_include_pad=False: the image border is not a boundary
        local_share = pool(
            foreground, kernel, stride=1, padding=kernel // 2, count_include_pad=False
        )
        weight = 1 + self.boundary_weight * (local_share - foreground).abs().amax(
            dim=1, keepdim=True
        )
        spatial = tuple(range(2, logits.ndim))
        cross_entropy = F.cross_entropy(logits, classes, reduction="none").unsqueeze(1)
        weighted_ce = (weight * cross_entropy).sum(spatial) / weight.sum(spatial)  # (N, 1)
        probabilities = logits.softmax(dim=1)[:, 1:]
        intersection = (probabilities * foreground * weight).sum(spatial)
        union = ((probabilities + foreground) * weight).sum(spatial)
        # +1 smoothing: an image without the class scores 0 when nothing is predicted
        weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
        return (weighted_ce[:, 0] + weighted_iou.mean(dim=1)).mean()


def segmentation_loss(name: str) -> torch.nn.Module:
    """The training loss named by ``--loss``: MONAI's batch DiceCE or the structure loss."""
    if name == "dice-ce":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    if name == "structure":
        return StructureLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_DESCRIPTIONS)}")
