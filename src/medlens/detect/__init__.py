"""Object detection: boxes in pixels and mm, YOLO/COCO data, a CenterNet detector, training
and inference (``medlens train detect``, ``medlens detect``)."""

from medlens.detect.boxes import Boxes, box_iou
from medlens.detect.model import CenterNetDetector, build_centernet
from medlens.models.zoo import ARCHITECTURES, register_architecture

if "CenterNetDetector" not in ARCHITECTURES:
    register_architecture("CenterNetDetector", build_centernet)

__all__ = ["Boxes", "CenterNetDetector", "box_iou"]
