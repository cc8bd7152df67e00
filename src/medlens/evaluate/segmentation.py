"""Segmentation metrics per case and label, in millimetres: overlap, surface distance, volume.

Definitions follow MONAI exactly (tested against ``monai.metrics`` to 1e-4):

* **Surface** of a mask: its voxels that have at least one 6-connected (3D) or 4-connected
  (2D) neighbour outside the mask, the image border counting as outside (MONAI's
  ``get_mask_edges``: binary erosion with the cross structuring element, XOR the mask).
* **Surface distance**: for each surface voxel of one mask, the Euclidean distance in mm
  (voxel centres scaled by ``spacing_mm``) to the nearest surface voxel of the other.
* **HD95**: ``max(q95(pred -> ref), q95(ref -> pred))`` with linear-interpolated quantiles
  (``torch.quantile``/``numpy.quantile`` default), as ``compute_hausdorff_distance(percentile=95)``.
* **ASSD**: the mean of both directions' distances pooled together, as
  ``compute_average_surface_distance(symmetric=True)``.
* **NSD** (normalised surface Dice): the fraction of both surfaces' voxels lying within
  ``nsd_tolerance_mm`` of the other surface, as ``compute_surface_dice`` (no sub-voxel areas).

Empty masks follow the Metrics Reloaded conventions (Maier-Hein et al., Nat. Methods 2024;
reference implementation ``MetricsReloaded.metrics.pairwise_measures``), so that summaries never
carry a silent NaN:

===================  ==============  ================  ===================
case                 Dice/IoU/NSD    precision/recall  HD95/ASSD
===================  ==============  ================  ===================
both empty           1 (correct)     1 / 1             0 mm
reference empty      0               0 / undefined     undefined
prediction empty     0               undefined / 0     undefined
===================  ==============  ================  ===================

"Undefined" is ``NaN`` in the row *and* named in the row's ``"flag"`` (``"both_empty"``,
``"empty_reference"``, ``"empty_prediction"`` or ``""``); :func:`medlens.evaluate.stats.summarize`
leaves such values out of the mean and reports how many it left out.

Speed: the metrics look only at the bounding box of both masks (plus a one-voxel margin),
found for all labels in one pass with ``scipy.ndimage.find_objects``; distances come from a
KD-tree over the surface voxels (``method="kdtree"``, fastest on CPU: see
``benchmarks/results/evaluate.md``), from Euclidean distance transforms of the cropped box
(``method="edt"``, ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing_mm``), or
from exact pairwise distances in torch on a GPU (``method="torch"``, chunked ``torch.cdist``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from medlens.errors import MedlensError

#: Columns of a segmentation metrics row, in CSV order (``case`` is added by the caller).
METRIC_COLUMNS = (
    "label",
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95_mm",
    "assd_mm",
    "nsd",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_abs_diff_ml",
    "volume_rel_diff",
    "flag",
)
DISTANCE_METHODS = ("kdtree", "edt", "torch")


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _spacing(spacing_mm: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing_mm is None:
        return np.ones(ndim)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (ndim,)).copy()
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise MedlensError(f"spacing_mm must be positive, got {spacing.tolist()}")
    return spacing


def _as_labels(array: np.ndarray) -> np.ndarray:
    """Integer view of a label map for find_objects (bool -> uint8 without copy)."""
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise MedlensError(
            "label map has non-integer values",
            hint="threshold probabilities (e.g. > 0.5) or argmax before evaluating",
        )
    return rounded.astype(np.int64)


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask (MONAI's ``get_mask_edges`` without cropping).

    A voxel is on the surface when it is in the mask and one of its face neighbours is not;
    voxels on the image border count as surface (outside the image is background).

    Example:
        >>> square = np.zeros((5, 5), bool); square[1:4, 1:4] = True
        >>> int(surface_mask(square).sum())  # the centre voxel is interior
        8
    """
    return mask & ~_interior(np.pad(mask, 1), mask.ndim)


def _surface_mask_torch(mask: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(mask[None].to(torch.uint8), (1, 1) * mask.ndim)[0].bool()
    return mask & ~_interior(padded, mask.ndim)


def _interior(padded: Any, ndim: int) -> Any:
    """Voxels of a 1-padded mask whose 2*ndim face neighbours are all set (numpy or torch)."""
    inner = (slice(1, -1),) * ndim
    interior = padded[inner] & padded[inner]  # a fresh array in both libraries, then in place
    for axis in range(ndim):
        for shift in (slice(0, -2), slice(2, None)):
            index = [slice(1, -1)] * ndim
            index[axis] = shift
            interior &= padded[tuple(index)]
    return interior


def _nearest_torch(
    points: torch.Tensor, targets: torch.Tensor, *, chunk: int = 4096
) -> torch.Tensor:
    """Distance from each point to its nearest target (exact, chunked to bound memory)."""
    out = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    step = max(1, (1 << 26) // max(1, targets.shape[0]))  # ~256 MB of float32 distances
    step = min(step, chunk * 16)
    for start in range(0, points.shape[0], step):
        block = points[start : start + step]
        # no matrix-multiply shortcut: it loses ~1e-4 mm of precision in float32
        distances = torch.cdist(block, targets, compute_mode="donot_use_mm_for_euclid_dist")
        out[start : start + step] = distances.amin(dim=1)
    return out


def surface_distances(
    pred_mask: np.ndarray | torch.Tensor,
    ref_mask: np.ndarray | torch.Tensor,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    method: str = "kdtree",
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances in mm: (prediction -> reference, reference -> prediction).

    One value per surface voxel of the first (second) mask, in no particular order.

    Both masks must be non-empty boolean arrays of the same 2D or 3D shape, already cropped or
    not (only the surface voxels matter). ``method`` is ``"kdtree"`` (CPU default), ``"edt"``
    (distance transform of the cropped box) or ``"torch"`` (exact pairwise on ``device``,
    e.g. ``"cuda"``).

    Example:
        >>> a = np.zeros((9, 9), bool); a[2:7, 2:7] = True
        >>> b = np.roll(a, 1, axis=0)
        >>> d_ab, d_ba = surface_distances(a, b, spacing_mm=(2.0, 1.0))
        >>> float(d_ab.max()), float(d_ba.max())
        (2.0, 2.0)
    """
    pred = _as_numpy(pred_mask).astype(bool, copy=False)
    ref = _as_numpy(ref_mask).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise MedlensError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    if not pred.any() or not ref.any():
        raise MedlensError("surface distances need two non-empty masks")
    spacing = _spacing(spacing_mm, pred.ndim)
    if method not in DISTANCE_METHODS:
        raise MedlensError(f"unknown distance method '{method}'", hint=f"use {DISTANCE_METHODS}")
    if method == "torch":
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pred_t = torch.as_tensor(pred, device=target)
        ref_t = torch.as_tensor(ref, device=target)
        scale = torch.as_tensor(spacing, dtype=torch.float32, device=target)
        pred_points = torch.nonzero(_surface_mask_torch(pred_t)).float() * scale
        ref_points = torch.nonzero(_surface_mask_torch(ref_t)).float() * scale
        forward = _nearest_torch(pred_points, ref_points)
        backward = _nearest_torch(ref_points, pred_points)
        return forward.double().cpu().numpy(), backward.double().cpu().numpy()
    pred_surface = surface_mask(pred)
    ref_surface = surface_mask(ref)
    if method == "edt":
        to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
        to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
        return to_ref[pred_surface], to_pred[ref_surface]
    # Voxels on both surfaces are at distance 0: only the others need a nearest-neighbour
    # query (for good predictions most of the surface coincides).
    common = pred_surface & ref_surface
    num_common = int(np.count_nonzero(common))
    pred_points = np.argwhere(pred_surface) * spacing
    ref_points = np.argwhere(ref_surface) * spacing
    pred_only = np.argwhere(pred_surface & ~common) * spacing
    ref_only = np.argwhere(ref_surface & ~common) * spacing
    forward = np.zeros(num_common + len(pred_only))
    backward = np.zeros(num_common + len(ref_only))
    if len(pred_only):
        tree = cKDTree(ref_points, leafsize=32, balanced_tree=False)
        forward[num_common:] = tree.query(pred_only, k=1)[0]
    if len(ref_only):
        tree = cKDTree(pred_points, leafsize=32, balanced_tree=False)
        backward[num_common:] = tree.query(ref_only, k=1)[0]
    return forward, backward


def _union_box(
    boxes: Iterable[tuple[slice, ...] | None], shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    found = [box for box in boxes if box is not None]
    if not found:
        return None
    starts = np.min([[s.start for s in box] for box in found], axis=0)
    stops = np.max([[s.stop for s in box] for box in found], axis=0)
    return tuple(slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True))


def _nan_if_zero(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def binary_metrics(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = 1.0,
    method: str = "kdtree",
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """All metrics for one pair of boolean masks (see the module docstring for conventions).

    Returns a dict with the keys of :data:`METRIC_COLUMNS` except ``label``.

    Example:
        >>> a = np.zeros((8, 8, 8), bool); a[2:6, 2:6, 2:6] = True
        >>> row = binary_metrics(a, a, spacing_mm=(1, 1, 2))
        >>> row["dice"], row["hd95_mm"], row["volume_ref_ml"]
        (1.0, 0.0, 0.128)
    """
    pred = _as_numpy(pred_mask).astype(bool, copy=False)
    ref = _as_numpy(ref_mask).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise MedlensError(f"mask shapes differ: prediction {pred.shape}, reference {ref.shape}")
    spacing = _spacing(spacing_mm, pred.ndim)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    n_both = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    volume_pred = n_pred * voxel_ml
    volume_ref = n_ref * voxel_ml
    row: dict[str, Any] = {
        "volume_pred_ml": volume_pred,
        "volume_ref_ml": volume_ref,
        "volume_abs_diff_ml": abs(volume_pred - volume_ref),
        "volume_rel_diff": _nan_if_zero(volume_pred - volume_ref, volume_ref),
    }
    if n_pred == 0 and n_ref == 0:
        row.update(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd95_mm=0.0, assd_mm=0.0)
        row.update(nsd=1.0, flag="both_empty", volume_rel_diff=0.0)
        return row
    row["dice"] = 2.0 * n_both / (n_pred + n_ref)
    row["iou"] = n_both / (n_pred + n_ref - n_both)
    row["precision"] = _nan_if_zero(n_both, n_pred)
    row["recall"] = _nan_if_zero(n_both, n_ref)
    if n_pred == 0 or n_ref == 0:
        row.update(hd95_mm=float("nan"), assd_mm=float("nan"), nsd=0.0)
        row["flag"] = "empty_prediction" if n_pred == 0 else "empty_reference"
        return row
    forward, backward = surface_distances(
        pred, ref, spacing_mm=spacing, method=method, device=device
    )
    row["hd95_mm"] = float(max(np.quantile(forward, 0.95), np.quantile(backward, 0.95)))
    row["assd_mm"] = float((forward.sum() + backward.sum()) / (forward.size + backward.size))
    within = np.count_nonzero(forward <= nsd_tolerance_mm) + np.count_nonzero(
        backward <= nsd_tolerance_mm
    )
    row["nsd"] = float(within / (forward.size + backward.size))
    row["flag"] = ""
    return row


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    labels: Iterable[int] | None = None,
    nsd_tolerance_mm: float = 1.0,
    method: str = "kdtree",
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Metrics of a predicted label map against a reference, one row per label.

    Args:
        pred: predicted label map, 2D or 3D (integer or bool; bool means label 1). A leading
            channel axis of size 1 (``(1, I, J, K)``, medlens' layout) and a trailing
            singleton slice axis of 2D images are removed.
        ref: reference label map of the same shape.
        spacing_mm: voxel size per axis in mm (scalar for isotropic); ``None`` means 1 mm.
        labels: positive label values to evaluate; default: every positive value in either
            map.
        nsd_tolerance_mm: distance under which a surface voxel counts as correct for NSD.
        method: surface distance back end, ``"kdtree"``, ``"edt"`` or ``"torch"``.
        device: torch device for ``method="torch"`` (default CUDA when available).

    Returns:
        One dict per label with the keys of :data:`METRIC_COLUMNS` (floats; ``flag`` names
        the empty-mask convention applied, see the module docstring).

    Example:
        >>> ref = np.zeros((20, 20, 10), np.uint8); ref[5:15, 5:15, 2:8] = 1
        >>> pred = np.roll(ref, 2, axis=0)
        >>> row, = segmentation_metrics(pred, ref, spacing_mm=(0.5, 0.5, 2.0))
        >>> round(row["dice"], 3), row["hd95_mm"], row["label"]
        (0.8, 1.0, 1)
    """
    pred_np = _squeeze(_as_numpy(pred))
    ref_np = _squeeze(_as_numpy(ref))
    if pred_np.shape != ref_np.shape:
        raise MedlensError(
            f"prediction shape {pred_np.shape} differs from reference shape {ref_np.shape}"
        )
    if pred_np.ndim not in (2, 3):
        raise MedlensError(f"label maps must be 2D or 3D, got shape {pred_np.shape}")
    spacing = _spacing(_squeeze_spacing(spacing_mm, _as_numpy(ref).shape, ref_np.ndim), ref_np.ndim)
    pred_int = _as_labels(pred_np)
    ref_int = _as_labels(ref_np)
    if labels is not None and any(int(label) <= 0 for label in labels):
        raise MedlensError("labels must be positive (0 is background)")
    # Everything below works on the bounding box of all foreground of both maps: two cheap
    # max-projections per map, then find_objects (a scalar loop) on the crop only.
    box = _union_box((_foreground_box(pred_int), _foreground_box(ref_int)), ref_int.shape)
    if box is None:
        box = (slice(0, 1),) * ref_int.ndim
    pred_int, ref_int = pred_int[box], ref_int[box]
    pred_boxes = ndimage.find_objects(_non_negative(pred_int))
    ref_boxes = ndimage.find_objects(_non_negative(ref_int))
    if labels is None:
        present = {i + 1 for i, box in enumerate(pred_boxes) if box is not None}
        present |= {i + 1 for i, box in enumerate(ref_boxes) if box is not None}
        labels = sorted(present)
    rows = []
    for label in labels:
        label = int(label)
        box = _union_box(
            (
                pred_boxes[label - 1] if 0 < label <= len(pred_boxes) else None,
                ref_boxes[label - 1] if 0 < label <= len(ref_boxes) else None,
            ),
            ref_int.shape,
        )
        if box is None:
            empty = np.zeros((1,) * ref_int.ndim, bool)
            row = binary_metrics(empty, empty, spacing_mm=spacing)
        else:
            row = binary_metrics(
                pred_int[box] == label,
                ref_int[box] == label,
                spacing_mm=spacing,
                nsd_tolerance_mm=nsd_tolerance_mm,
                method=method,
                device=device,
            )
        rows.append({"label": label, **{key: row[key] for key in METRIC_COLUMNS[1:]}})
    return rows


def _foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of all positive labels, from max-projections (no full-size temporaries)."""
    if labels.size == 0:
        return None
    if labels.ndim == 3:
        plane = labels.max(axis=2)
        extents = [plane.max(axis=1), plane.max(axis=0), labels.max(axis=(0, 1))]
    else:
        extents = [
            labels.max(axis=tuple(a for a in range(labels.ndim) if a != axis))
            for axis in range(labels.ndim)
        ]
    box = []
    for extent in extents:
        found = np.flatnonzero(extent > 0)
        if found.size == 0:
            return None
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def _non_negative(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind == "u" or labels.dtype == bool:
        return labels
    return np.clip(labels, 0, None)


def _squeeze(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def _squeeze_spacing(
    spacing_mm: float | Sequence[float] | None, original_shape: tuple[int, ...], ndim: int
) -> float | Sequence[float] | None:
    if spacing_mm is None or np.ndim(spacing_mm) == 0:
        return spacing_mm
    spacing = list(np.asarray(spacing_mm, dtype=np.float64))
    return spacing[:ndim] if len(spacing) > ndim else spacing
