"""CenterNet training targets, loss and decoding (heatmap peaks -> boxes).

Each object is a Gaussian peak on the class heatmap at its centre (stride-4 cells), elliptic
with sigma proportional to the box width/height (TTFNet-style, so thin and tiny boxes keep a
sharp peak); size and sub-cell offset are regressed at the centre cell only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medlens.detect.boxes import Boxes


def make_targets(
    boxes: Boxes, *, shape: tuple[int, int], num_classes: int, stride: int, alpha: float = 0.54
) -> dict[str, np.ndarray]:
    """Targets for one image of ``shape`` (H, W) network pixels."""
    out_h, out_w = shape[0] // stride, shape[1] // stride
    heatmap = np.zeros((num_classes, out_h, out_w), np.float32)
    size = np.zeros((2, out_h, out_w), np.float32)
    offset = np.zeros((2, out_h, out_w), np.float32)
    mask = np.zeros((out_h, out_w), np.float32)
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    # larger boxes first so a small box's regression target wins a shared cell
    order = np.argsort(-np.prod(boxes.size, axis=1)) if len(boxes) else []
    for index in order:
        x0, y0, x1, y1 = boxes.xyxy[index] / stride
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), out_w - 1), min(int(cy), out_h - 1)
        sigma_x = max(alpha * (x1 - x0) / 6, 0.4)
        sigma_y = max(alpha * (y1 - y0) / 6, 0.4)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sigma_x**2) - ((ys - iy) ** 2) / (2 * sigma_y**2))
        label = int(boxes.labels[index])
        np.maximum(heatmap[label], gauss, out=heatmap[label])
        heatmap[label, iy, ix] = 1.0
        size[:, iy, ix] = (x1 - x0, y1 - y0)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return {"heatmap": heatmap, "size": size, "offset": offset, "mask": mask}


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
) -> dict[str, torch.Tensor]:
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
) -> list[Boxes]:
    """Boxes (network pixels) per batch item from heatmap peaks (3x3 max-pool "NMS")."""
    heat = torch.sigmoid(output["heatmap"].float())
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * peaks
    batch, classes, height, width = heat.shape
    results = []
    for b in range(batch):
        scores, index = heat[b].reshape(-1).topk(min(max_objects, heat[b].numel()))
        keep = scores >= score_threshold
        scores, index = scores[keep], index[keep]
        labels = index // (height * width)
        cell = index % (height * width)
        ys, xs = (cell // width).float(), (cell % width).float()
        w = output["size"][b, 0].reshape(-1)[cell].float()
        h = output["size"][b, 1].reshape(-1)[cell].float()
        cx = xs + output["offset"][b, 0].reshape(-1)[cell].float()
        cy = ys + output["offset"][b, 1].reshape(-1)[cell].float()
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * stride
        results.append(Boxes(xyxy.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy()))
    return results
