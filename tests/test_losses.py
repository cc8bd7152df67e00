"""Training losses: the structure loss that `medlens train seg --loss structure` uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlens.train.losses import StructureLoss, segmentation_loss


def pranet_structure_loss(logit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PraNet's published loss (github.com/DengPingFan/PraNet, MyTrain.py), sigmoid head."""
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logit, mask, reduction="none")
    bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    probability = torch.sigmoid(logit)
    intersection = (probability * mask * weight).sum(dim=(2, 3))
    union = ((probability + mask) * weight).sum(dim=(2, 3))
    iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (bce + iou).mean()


def test_two_class_softmax_equals_pranets_sigmoid_loss_at_352_pixels() -> None:
    torch.manual_seed(0)
    labels = torch.zeros(3, 1, 352, 352, dtype=torch.long)
    labels[:, :, 100:200, 120:260] = 1  # away from the border, where padding rules differ
    labels[1, :, 50:80, 50:90] = 1
    foreground_logit = 2 * torch.randn(3, 1, 352, 352)
    softmax_logits = torch.cat([torch.zeros_like(foreground_logit), foreground_logit], dim=1)

    ours = StructureLoss()(softmax_logits, labels)
    reference = pranet_structure_loss(foreground_logit, labels.float())

    assert torch.allclose(ours, reference, atol=1e-5)


def test_a_small_lesion_counts_as_much_as_a_large_one() -> None:
    # batch Dice pools pixels over the batch, so missing a small lesion beside a large one
    # barely moves it; the per-image IoU term loses a whole image's worth
    labels = torch.zeros(2, 1, 64, 64, dtype=torch.long)
    labels[0, :, 4:60, 4:60] = 1
    labels[1, :, 30:34, 30:34] = 1
    perfect = 10 * torch.stack([1 - labels[:, 0], labels[:, 0]], dim=1).float() - 5
    missed_small = perfect.clone()
    missed_small[1] = torch.tensor([5.0, -5.0]).view(2, 1, 1)  # all background

    structure = StructureLoss()
    batch_dice_ce = segmentation_loss("dice-ce")
    structure_penalty = structure(missed_small, labels) - structure(perfect, labels)
    batch_dice_penalty = batch_dice_ce(missed_small, labels) - batch_dice_ce(perfect, labels)

    assert structure_penalty > 0.45  # one of two images lost (almost) its whole IoU
    assert batch_dice_penalty < 0.05


def test_three_classes_in_3d_train_towards_the_labels() -> None:
    torch.manual_seed(1)
    labels = torch.zeros(1, 1, 12, 16, 16, dtype=torch.long)
    labels[..., 2:8, 3:9, 3:9] = 1
    labels[..., 4:10, 9:14, 8:14] = 2
    logits = torch.zeros(1, 3, 12, 16, 16, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    loss = StructureLoss()
    first = float(loss(logits, labels).detach())
    for _ in range(60):
        optimizer.zero_grad()
        value = loss(logits, labels)
        value.backward()
        optimizer.step()

    assert float(value.detach()) < 0.2 * first
    assert torch.equal(logits.argmax(dim=1, keepdim=True), labels)


def test_unknown_loss_name_is_refused() -> None:
    with pytest.raises(ValueError, match="dice-ce, structure"):
        segmentation_loss("focal")
