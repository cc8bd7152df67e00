"""Second-stage rescoring of detections by what each box holds (false-positive reduction).

CAD systems pair a candidate detector with a false-positive reduction stage (LUNA16's two
tracks). Ours is the smallest such stage: a logistic regression on two numbers per box,

* the logit of the network's score, and
* the peak grey value inside the box (0-1, on the detector's own grey input),

fitted on the detector's predictions on its training images (a prediction is positive when it
matches a ground-truth box at IoU >= 0.5, COCO's greedy matching). On the kidney-stone CT slices
the network's strongest false positives are stone-free kidneys in scans whose annotator boxed
the whole kidney around a stone; a stone is hyperdense (the brightest pixels of the slice), so
a box without a bright pixel is rarely a finding. The fit learns how much that counts; it does
not hard-code it (the weight may be zero or negative on other data). The peak is read on the
grey pixels the network sees, so for DICOM CT it depends on the window (the file's own, as
``medlens detect`` uses it); an abdominal window shows stones white, as in the training JPEGs.

Example:
    >>> rescoring = BoxRescoring(score_weight=1.0, peak_weight=4.0, bias=-2.0)
    >>> pixels = np.zeros((8, 8), np.uint8); pixels[1, 1] = 255
    >>> boxes = Boxes(np.array([[0.0, 0, 4, 4], [4, 4, 8, 8]]), np.array([0.5, 0.5]), [0, 0])
    >>> rescoring(boxes, pixels).scores.round(3).tolist()  # the box with the bright pixel
    [0.881, 0.119]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.detect.boxes import Boxes
from medlens.detect.data import DetectionSample
from medlens.errors import MedlensError
from medlens.evaluate.detection import match_detections

#: what the card says the stage is (``preprocessing.rescoring.method``)
METHOD = (
    "logistic regression on (logit of the network score, peak grey value 0-1 inside the box), "
    "fitted on the detector's predictions on its training images (positive: IoU >= 0.5 match)"
)


def peak_inside(pixels: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """Brightest grey value (0-1) inside each pixel-edge ``xyxy`` box of a (H, W) uint8 image.

    A box thinner than a pixel still covers the pixel it lies in.

    >>> pixels = np.zeros((4, 4), np.uint8); pixels[2, 3] = 51
    >>> peak_inside(pixels, np.array([[2.5, 1.2, 4.0, 3.0], [0, 0, 1, 1]])).tolist()
    [0.2, 0.0]
    """
    height, width = pixels.shape[:2]
    peaks = np.zeros(len(xyxy), np.float64)
    for index, (x0, y0, x1, y1) in enumerate(np.asarray(xyxy, np.float64)):
        left = min(max(int(np.floor(x0)), 0), width - 1)
        top = min(max(int(np.floor(y0)), 0), height - 1)
        right = min(max(int(np.ceil(x1)), left + 1), width)
        bottom = min(max(int(np.ceil(y1)), top + 1), height)
        peaks[index] = pixels[top:bottom, left:right].max() / 255.0
    return peaks


def _score_logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


@dataclasses.dataclass(frozen=True)
class BoxRescoring:
    """``new score = sigmoid(score_weight * logit(score) + peak_weight * peak + bias)``.

    Only boxes the network scored at least ``min_score`` are rescored (and fitted on); the many
    weak peaks below it keep their scores, so they cannot swamp the fit. (On the kidney-stone
    model, floors of 0.02-0.1 gave the same fit quality; at 0.01 the weak peaks, many of them
    on bone, pulled the peak weight down from about 3-4 to 0.9.)
    """

    score_weight: float
    peak_weight: float
    bias: float
    min_score: float = 0.05

    def scores(self, scores: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        logits = self.score_weight * _score_logit(scores) + self.peak_weight * peaks + self.bias
        return np.where(scores >= self.min_score, 1 / (1 + np.exp(-logits)), scores)

    def __call__(self, boxes: Boxes, pixels: np.ndarray) -> Boxes:
        """``boxes`` (in ``pixels``' coordinates) with their scores replaced."""
        if not len(boxes):
            return boxes
        new = self.scores(boxes.scores, peak_inside(pixels, boxes.xyxy))
        return Boxes(boxes.xyxy, new.astype(np.float32), boxes.labels)

    def to_card(self) -> dict[str, Any]:
        return {"method": METHOD, **dataclasses.asdict(self)}

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> BoxRescoring:
        try:
            return cls(
                score_weight=float(entry["score_weight"]),
                peak_weight=float(entry["peak_weight"]),
                bias=float(entry["bias"]),
                min_score=float(entry.get("min_score", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MedlensError(
                f"the model card's preprocessing.rescoring is malformed ({error})",
                hint="run `medlens rescore MODEL` again or remove the entry",
            ) from None


def fit_rescoring(
    found: Sequence[Boxes],
    truth: Sequence[Boxes],
    pixels: Sequence[np.ndarray],
    *,
    iou_threshold: float = 0.5,
    min_score: float = 0.05,
    l2: float = 1e-3,
) -> BoxRescoring:
    """Fit the rescoring on one detector's predictions ``found`` for images with boxes ``truth``.

    Predictions are matched per image and class as COCO does; all classes share one fit.
    """
    logits, peaks, positive = [], [], []
    for boxes, gt, image in zip(found, truth, pixels, strict=True):
        if not len(boxes):
            continue
        hits = np.zeros(len(boxes), bool)
        for label in np.unique(boxes.labels):
            mine = np.flatnonzero(boxes.labels == label)
            theirs = gt.xyxy[gt.labels == label] if len(gt) else np.zeros((0, 4))
            # match_detections returns its detections sorted by score, so match in that order
            order = mine[np.argsort(-boxes.scores[mine], kind="mergesort")]
            _, matched, _ = match_detections(
                boxes.xyxy[order],
                boxes.scores[order],
                np.zeros(len(order)),
                theirs,
                np.zeros(len(theirs)),
                iou_threshold=iou_threshold,
                max_detections=None,
            )
            hits[order] = matched
        strong = boxes.scores >= min_score
        logits.append(_score_logit(boxes.scores[strong]))
        peaks.append(peak_inside(image, boxes.xyxy[strong]))
        positive.append(hits[strong])
    labels = np.concatenate(positive) if positive else np.zeros(0, bool)
    if not labels.any() or labels.all():
        raise MedlensError(
            "cannot fit the rescoring: the training predictions need both true and false positives",
            hint="train longer, or skip the stage (--no-rescore)",
        )
    features = np.stack([np.concatenate(logits), np.concatenate(peaks)], 1)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = torch.tensor((features - mean) / std)
    y = torch.tensor(labels, dtype=torch.float64)
    weights = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logit = x @ weights[:2] + weights[2]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
        loss = loss + l2 * (weights[:2] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    scaled = weights.detach().numpy()[:2] / std  # back to the raw features' units
    bias = float(weights.detach()[2]) - float(scaled @ mean)
    return BoxRescoring(
        score_weight=float(scaled[0]), peak_weight=float(scaled[1]), bias=bias, min_score=min_score
    )


@dataclasses.dataclass(frozen=True)
class RescoringResult:
    """What :func:`rescore_model` measured; ``kept`` says whether the card now has the stage."""

    rescoring: BoxRescoring
    val_ap50_without: float
    val_ap50_with: float
    kept: bool


def rescore_model(
    model: str | Path,
    *,
    data: str | Path | None = None,
    samples: tuple[list[DetectionSample], list[DetectionSample]] | None = None,
    log: Callable[[str], None] = print,
) -> RescoringResult:
    """Fit the rescoring for a detection model and add it to its card if val AP50 holds.

    ``data`` is the dataset the model was trained on (default: the card's ``training.data``):
    the fit uses its train split, the check its val split (or ``samples``: the train and val
    images already loaded, as ``train detect`` passes them). The stage is kept (like nnU-Net's
    post-processing, chosen on validation) only if val AP50 does not fall; the card then
    records both figures and the val metrics with the stage. A stage already in the card is
    replaced, or dropped if it no longer holds. The weights are not touched.
    """
    from medlens.detect.data import load_detection_data
    from medlens.detect.infer import load_detector
    from medlens.detect.train import card_val_metrics, evaluate_detector
    from medlens.io.atomic import atomic_output
    from medlens.models.zoo import CARD_NAME, find_model

    folder = find_model(model)
    detector, card = load_detector(folder, conf=0.001, engine="torch")
    source = Path(data or card.training.get("data", ""))
    if samples is not None:
        train, val = samples
    elif source.is_dir():
        train, names = load_detection_data(source, "train", names=card.labels)
        val, _ = load_detection_data(source, "val", names=names)
    else:
        raise MedlensError(
            "the dataset the model was trained on is not there",
            path=source,
            hint="pass --data with its YOLO or COCO folder",
        )
    detector = dataclasses.replace(detector, rescoring=None)
    log(f"predicting {len(train)} training images to fit the rescoring")
    pixels = [s.pixels for s in train]
    rescoring = fit_rescoring(detector(pixels), [s.boxes for s in train], pixels)
    without = evaluate_detector(detector, val)
    with_stage = evaluate_detector(dataclasses.replace(detector, rescoring=rescoring), val)
    kept = with_stage["ap50"] >= without["ap50"]
    log(
        f"val AP50 {without['ap50']:.4f} without the rescoring, {with_stage['ap50']:.4f} with it: "
        + ("kept" if kept else "not kept")
    )
    preprocessing = {k: v for k, v in card.preprocessing.items() if k != "rescoring"}
    metrics = {k: v for k, v in card.metrics.items() if k != "without_rescoring"}
    if kept:
        preprocessing["rescoring"] = {
            **rescoring.to_card(),
            "fitted_on": f"{len(train)} training images of {source}",
            "fitted_by": "`medlens train detect` at its end, or `medlens rescore MODEL`",
            "val_ap50_without": round(without["ap50"], 4),
            "val_ap50_with": round(with_stage["ap50"], 4),
        }
        metrics["without_rescoring"] = {key: round(value, 4) for key, value in without.items()}
    elif "rescoring" not in card.preprocessing:
        return RescoringResult(rescoring, without["ap50"], with_stage["ap50"], kept)
    # the card's val figures are those of what ships (a stale stage from before is dropped)
    metrics.update(card_val_metrics(with_stage if kept else without))
    card = dataclasses.replace(card, preprocessing=preprocessing, metrics=metrics)
    with atomic_output(folder / CARD_NAME) as temporary:
        temporary.write_text(card.to_json())
    return RescoringResult(rescoring, without["ap50"], with_stage["ap50"], kept)
