"""CenterNet / TTFNet training targets, loss and decoding (heatmap peaks -> boxes).

Each object is a Gaussian peak on the class heatmap at its centre (stride-4 cells), elliptic
with sigma proportional to the box width/height (TTFNet, so thin and tiny boxes keep a sharp
peak). Boxes are regressed either TTFNet-style (``"ltrb"``: every cell under the object's
Gaussian predicts its distances to the four box edges, GIoU loss weighted by the Gaussian,
each object's weights summing to 1; with an IoU branch, each such cell also learns the IoU its
box reaches, IoU-aware RetinaNet's binary cross-entropy) or CenterNet-style (``"size_offset"``:
width/height and sub-cell offset at the centre cell only, L1).

With ``size_split_px`` (``ltrb`` only), objects are split into size groups by ``sqrt(w h)``
(network pixels), each with its own heatmap and box channels (FCOS/YOLO assign objects to
pyramid levels by size the same way): channel ``g * num_classes + c`` is class ``c`` in group
``g``, ``ltrb`` holds 4 channels per group. One cell can then offer a tight and a loose box at
once, which a single head averages into a box that matches neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medlens.detect.boxes import Boxes


def size_split_problem(
    size_split_px: Sequence[float], *, box_encoding: str, iou_branch: bool
) -> str | None:
    """What is wrong with these size groups, or None (the network and the CLI both ask).

    >>> size_split_problem([40, 20], box_encoding="ltrb", iou_branch=False)
    'the values must be > 0 and rising, got [40, 20]'
    """
    splits = list(size_split_px)
    if splits != sorted(set(splits)) or min(splits, default=1) <= 0:
        return f"the values must be > 0 and rising, got {splits}"
    if splits and (box_encoding != "ltrb" or iou_branch):
        return "size groups need the ltrb box encoding and cannot be combined with the IoU branch"
    return None


def size_groups(boxes: Boxes, size_split_px: Sequence[float]) -> np.ndarray:
    """Size group of each box: how many of ``size_split_px`` its ``sqrt(w h)`` reaches.

    >>> size_groups(Boxes(np.array([[0.0, 0, 10, 10], [0, 0, 40, 50]])), [36.0]).tolist()
    [0, 1]
    """
    side_px = np.sqrt(np.prod(boxes.size, axis=1))
    return np.searchsorted(np.asarray(size_split_px, float), side_px, side="right")


def make_targets(
    boxes: Boxes,
    *,
    shape: tuple[int, int],
    num_classes: int,
    stride: int,
    alpha: float = 0.54,
    size_split_px: Sequence[float] = (),
) -> dict[str, np.ndarray]:
    """Targets for one image of ``shape`` (H, W) network pixels.

    ``box`` is ``(4 * groups, H, W)`` and ``box_weight`` ``(groups, H, W)`` (groups = one more
    than ``size_split_px`` has values); ``mask`` marks the centre cells of all groups.
    """
    out_h, out_w = shape[0] // stride, shape[1] // stride
    groups = len(size_split_px) + 1
    heatmap = np.zeros((num_classes * groups, out_h, out_w), np.float32)
    size = np.zeros((2, out_h, out_w), np.float32)
    offset = np.zeros((2, out_h, out_w), np.float32)
    mask = np.zeros((out_h, out_w), np.float32)
    # x0, y0, x1, y1 in network pixels, per group
    box_target = np.zeros((groups, 4, out_h, out_w), np.float32)
    box_weight = np.zeros((groups, out_h, out_w), np.float32)
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    group_of = size_groups(boxes, size_split_px) if len(boxes) else []
    # larger boxes first so a small box's regression target wins a shared cell
    order = np.argsort(-np.prod(boxes.size, axis=1)) if len(boxes) else []
    for index in order:
        group = int(group_of[index])
        x0, y0, x1, y1 = boxes.xyxy[index] / stride
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), out_w - 1), min(int(cy), out_h - 1)
        sigma_x = max(alpha * (x1 - x0) / 6, 0.4)
        sigma_y = max(alpha * (y1 - y0) / 6, 0.4)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sigma_x**2) - ((ys - iy) ** 2) / (2 * sigma_y**2))
        channel = group * num_classes + int(boxes.labels[index])
        np.maximum(heatmap[channel], gauss, out=heatmap[channel])
        heatmap[channel, iy, ix] = 1.0
        size[:, iy, ix] = (x1 - x0, y1 - y0)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
        # TTFNet regression samples: cells under the Gaussian whose centre lies in the box
        centres_x, centres_y = (xs + 0.5) * stride, (ys + 0.5) * stride
        inside = (
            (centres_x > x0 * stride)
            & (centres_x < x1 * stride)
            & (centres_y > y0 * stride)
            & (centres_y < y1 * stride)
        )
        weight = np.where(inside, gauss, 0.0)
        weight[iy, ix] = max(weight[iy, ix], 1.0)
        weight = weight / weight.sum()
        region = weight > 0
        box_target[group][:, region] = (boxes.xyxy[index] * 1.0)[:, None]
        box_weight[group][region] = weight[region]
    return {
        "heatmap": heatmap,
        "size": size,
        "offset": offset,
        "mask": mask,
        "box": box_target.reshape(groups * 4, out_h, out_w),
        "box_weight": box_weight,
    }


def cell_boxes(ltrb: torch.Tensor, *, stride: int) -> torch.Tensor:
    """(B, 4, H, W) edge distances in cells -> (B, 4, H, W) ``xyxy`` in network pixels."""
    height, width = ltrb.shape[-2:]
    ys = (torch.arange(height, device=ltrb.device, dtype=ltrb.dtype) + 0.5) * stride
    xs = (torch.arange(width, device=ltrb.device, dtype=ltrb.dtype) + 0.5) * stride
    distance = ltrb * stride
    return torch.stack(
        [
            xs[None, None, :] - distance[:, 0],
            ys[None, :, None] - distance[:, 1],
            xs[None, None, :] + distance[:, 2],
            ys[None, :, None] + distance[:, 3],
        ],
        dim=1,
    )


def pairwise_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each (N, 4) ``xyxy`` box in ``pred`` with the one in the same row of ``target``.

    >>> pairwise_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]])).tolist()
    [0.3333333432674408]
    """
    return _iou_union(pred, target)[0]


def _iou_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    low = torch.maximum(pred[:, :2], target[:, :2])
    high = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (high - low).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    return inter / union.clamp(min=1e-6), union


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of (N, 4) ``xyxy`` boxes."""
    iou, union = _iou_union(pred, target)
    hull = torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])
    hull_area = hull.clamp(min=0).prod(dim=1)
    return 1 - (iou - (hull_area - union) / hull_area.clamp(min=1e-6))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CornerNet/CenterNet penalty-reduced focal loss, normalised by the number of objects."""
    prob = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative = 1 - positive
    pos_loss = torch.log(prob) * (1 - prob) ** 2 * positive
    neg_loss = torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * negative
    count = positive.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / count.clamp(min=1.0)


def centernet_loss(
    output: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
    giou_weight: float = 5.0,
    quality_weight: float = 1.0,
    stride: int = 4,
) -> dict[str, torch.Tensor]:
    if "ltrb" in output:
        heat = focal_loss(output["heatmap"], targets["heatmap"])
        weight = targets["box_weight"]  # (B, groups, H, W)
        selected = weight > 0
        count = targets["mask"].sum().clamp(min=1.0)
        quality = output["quality"].sum() * 0.0 if "quality" in output else None
        if selected.any():
            batch, groups, height, width = weight.shape
            per_group = (batch, groups, 4, height, width)
            ltrb = output["ltrb"].float().reshape(batch * groups, 4, height, width)
            pred = cell_boxes(ltrb, stride=stride).reshape(per_group)
            pred = pred.permute(0, 1, 3, 4, 2)[selected]
            target = targets["box"].reshape(per_group).permute(0, 1, 3, 4, 2)[selected]
            box = (giou_loss(pred, target) * weight[selected]).sum() / count
            if quality is not None:
                # the IoU the box reaches now is the target (not a gradient path to the box)
                reached = pairwise_iou(pred.detach(), target)
                logits = output["quality"].float()[selected]
                bce = F.binary_cross_entropy_with_logits(logits, reached, reduction="none")
                quality = (bce * weight[selected]).sum() / count
        else:
            box = output["ltrb"].sum() * 0.0
        losses = {"loss": heat + giou_weight * box, "heatmap": heat, "giou": box}
        if quality is not None:
            losses["loss"] = losses["loss"] + quality_weight * quality
            losses["quality"] = quality
        return losses
    mask = targets["mask"].unsqueeze(1)
    count = mask.sum().clamp(min=1.0)
    heat = focal_loss(output["heatmap"], targets["heatmap"])
    size = (
        F.l1_loss(output["size"].float(), targets["size"], reduction="none") * mask
    ).sum() / count
    offset = (
        F.l1_loss(output["offset"].float(), targets["offset"], reduction="none") * mask
    ).sum() / count
    total = heat + size_weight * size + offset_weight * offset
    return {"loss": total, "heatmap": heat, "size": size, "offset": offset}


@torch.no_grad()
def decode(
    output: dict[str, torch.Tensor],
    *,
    stride: int,
    max_objects: int = 100,
    score_threshold: float = 0.01,
    quality_exponent: float = 0.5,
) -> list[Boxes]:
    """Boxes (network pixels) per batch item from heatmap peaks (3x3 max-pool "NMS").

    With a ``quality`` output (IoU branch) a peak scores ``heat ** (1 - quality_exponent) *
    iou ** quality_exponent`` (IoU-aware RetinaNet's product; 0.5 there).
    """
    heat = torch.sigmoid(output["heatmap"].float())
    groups = output["ltrb"].shape[1] // 4 if "ltrb" in output else 1
    num_classes = heat.shape[1] // groups
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    if "quality" in output:
        iou = torch.sigmoid(output["quality"].float())
        heat = heat ** (1 - quality_exponent) * iou**quality_exponent
    heat = heat * peaks
    batch, classes, height, width = heat.shape
    results = []
    for b in range(batch):
        scores, index = heat[b].reshape(-1).topk(min(max_objects, heat[b].numel()))
        keep = scores >= score_threshold
        scores, index = scores[keep], index[keep]
        channel = index // (height * width)
        labels, group = channel % num_classes, channel // num_classes
        cell = index % (height * width)
        if "ltrb" in output:
            ltrb = output["ltrb"][b].float().reshape(groups, 4, height, width)
            boxes = cell_boxes(ltrb, stride=stride)
            xyxy = boxes.reshape(groups, 4, -1)[group, :, cell]
            results.append(Boxes(xyxy.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy()))
            continue
        ys, xs = (cell // width).float(), (cell % width).float()
        w = output["size"][b, 0].reshape(-1)[cell].float()
        h = output["size"][b, 1].reshape(-1)[cell].float()
        cx = xs + output["offset"][b, 0].reshape(-1)[cell].float()
        cy = ys + output["offset"][b, 1].reshape(-1)[cell].float()
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * stride
        results.append(Boxes(xyxy.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy()))
    return results
