"""Run a detector on grey pixels: letterbox, forward, decode, map back, NMS."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from medlens.detect.augment import letterbox
from medlens.detect.boxes import Boxes
from medlens.detect.centernet import decode
from medlens.detect.model import GREY_MEAN, GREY_STD, OUTPUT_STRIDE
from medlens.detect.rescore import BoxRescoring


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W) -> float tensor with the encoder's grey mean/std."""
    return (torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0 - GREY_MEAN) / GREY_STD


@dataclasses.dataclass
class Detector:
    """A trained network plus how to feed it.

    ``input_size``: long side in network pixels; ``conf``: minimum score kept;
    ``nms_iou``: IoU above which a lower-scored box of the same class is dropped;
    ``flip_tta``: also run the mirrored image and average (2x the time);
    ``rescoring``: a second stage that replaces each box's score before ``conf`` and NMS
    (:mod:`medlens.detect.rescore`).
    """

    network: torch.nn.Module
    input_size: int = 384
    conf: float = 0.25
    nms_iou: float = 0.5
    max_objects: int = 100
    device: str = "cpu"
    flip_tta: bool = False
    rescoring: BoxRescoring | None = None

    def __post_init__(self) -> None:
        # channels-last convolutions are ~1.3x faster on CPU (oneDNN)
        self.network.to(memory_format=torch.channels_last)

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.network(batch)
        if not self.flip_tta or "ltrb" not in output:
            return output
        # average with the left-right mirrored image (left/right distances swap)
        mirrored = self.network(batch.flip(-1))
        swap = [g * 4 + i for g in range(output["ltrb"].shape[1] // 4) for i in (2, 1, 0, 3)]
        ltrb = mirrored["ltrb"].flip(-1)[:, swap]
        averaged = {"ltrb": (output["ltrb"] + ltrb) / 2}
        for key in ("heatmap", "quality"):  # probabilities averaged, given back as logits
            if key in output:
                mean = (torch.sigmoid(output[key]) + torch.sigmoid(mirrored[key].flip(-1))) / 2
                averaged[key] = torch.logit(mean, eps=1e-6)
        return averaged

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], *, batch_size: int = 1) -> list[Boxes]:
        """Boxes in each image's own pixel coordinates (pixel-edge ``xyxy``).

        Batch 1 is the default: on CPU it measured ~2x faster per image than batch 8.
        """
        self.network.eval()
        results: list[Boxes] = []
        # with a rescoring, every box it may lift over ``conf`` must survive the decoding
        threshold = min(self.conf, self.rescoring.min_score) if self.rescoring else self.conf
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            boxed = [letterbox(pixels, self.input_size) for pixels in chunk]
            batch = normalise(np.stack([b[0] for b in boxed]))[:, None]
            batch = batch.to(self.device, memory_format=torch.channels_last)
            output = self._forward(batch)
            decoded = decode(
                output,
                stride=OUTPUT_STRIDE,
                max_objects=self.max_objects,
                score_threshold=threshold,
            )
            for pixels, (_, scale), found in zip(chunk, boxed, decoded, strict=True):
                height, width = pixels.shape
                xyxy = found.xyxy / scale
                xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
                xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
                boxes = Boxes(xyxy, found.scores, found.labels)
                boxes = boxes[np.all(boxes.size > 0, axis=1)]
                if self.rescoring is not None:
                    boxes = self.rescoring(boxes, pixels)
                    boxes = boxes[boxes.scores >= self.conf]
                results.append(boxes.nms(iou_threshold=self.nms_iou))
        return results
