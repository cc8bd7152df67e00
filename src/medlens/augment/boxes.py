"""Box-aware batched 2D augmentation for detection: flips, zoom and shift with exact boxes.

Only axis-aligned maps (flip, isotropic scale, translation) are used, so a box stays an
exact box (no loose bounding boxes of rotated corners). Images are resampled with one
``grid_sample`` per batch; boxes are mapped with the same per-sample matrices.

Box convention: ``(x1, y1, x2, y2)`` in pixels, x along the last axis (W), y along H;
pixel ``(row, col)`` covers ``[col, col+1) x [row, row+1)``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from medlens.augment.spatial import check_probability, check_range, uniform
from medlens.errors import MedlensError


@dataclasses.dataclass(kw_only=True)
class BoxAugment2D:
    """Random horizontal/vertical flips, zoom and shift of images with their boxes.

    Args:
        horizontal_flip_prob: probability of a left-right flip.
        vertical_flip_prob: probability of an up-down flip.
        scale_prob / scale: probability and range of the zoom (> 1 enlarges the content).
        translate_prob / translate_fraction: probability and maximum shift as a fraction
            of the image size.
        min_visible_fraction: boxes keeping less than this fraction of their area inside
            the image are dropped (with their classes).
        padding_mode: ``grid_sample`` padding, ``"zeros"`` or ``"border"``.

    Example:
        >>> augment = BoxAugment2D(horizontal_flip_prob=1.0, scale_prob=0.0, translate_prob=0.0)
        >>> images = torch.zeros(1, 1, 10, 20)
        >>> boxes = [torch.tensor([[0.0, 0, 5, 5]])]
        >>> _, boxes, classes = augment(images, boxes, [torch.tensor([0])])
        >>> boxes[0].tolist()
        [[15.0, 0.0, 20.0, 5.0]]
    """

    horizontal_flip_prob: float = 0.5
    vertical_flip_prob: float = 0.0
    scale_prob: float = 0.5
    scale: tuple[float, float] = (0.8, 1.2)
    translate_prob: float = 0.5
    translate_fraction: float = 0.1
    min_visible_fraction: float = 0.3
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        for name in (
            "horizontal_flip_prob",
            "vertical_flip_prob",
            "scale_prob",
            "translate_prob",
            "min_visible_fraction",
        ):
            check_probability(getattr(self, name), name)
        check_range(self.scale, "scale", low=0.0, strict=True)
        if not 0 <= self.translate_fraction < 1:
            raise MedlensError(
                f"translate_fraction must be in [0, 1), got {self.translate_fraction}"
            )
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise MedlensError(
                f"padding_mode must be zeros/border/reflection, got {self.padding_mode!r}"
            )

    def __call__(
        self,
        images: torch.Tensor,
        boxes: list[torch.Tensor],
        classes: list[torch.Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
        """Augment ``[B, C, H, W]`` images and per-image ``[N, 4]`` xyxy pixel boxes."""
        if images.ndim != 4:
            raise MedlensError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if len(boxes) != batch or (classes is not None and len(classes) != batch):
            raise MedlensError(f"need one boxes (and classes) tensor per image, batch is {batch}")
        dtype = torch.float64
        sign_x = torch.where(
            torch.rand(batch, generator=generator) < self.horizontal_flip_prob, -1.0, 1.0
        ).to(dtype)
        sign_y = torch.where(
            torch.rand(batch, generator=generator) < self.vertical_flip_prob, -1.0, 1.0
        ).to(dtype)
        zoom = uniform(self.scale[0], self.scale[1], (batch,), generator)
        zoom = torch.where(
            torch.rand(batch, generator=generator) < self.scale_prob, zoom, torch.ones_like(zoom)
        )
        shift = uniform(-self.translate_fraction, self.translate_fraction, (batch, 2), generator)
        shift = shift * (torch.rand(batch, generator=generator) < self.translate_prob)[:, None]
        # Forward map in pixel units about the centre: p_out = sign * zoom * (p_in - c) + c + shift
        # (shift in pixels = fraction * size). grid_sample needs the inverse, in normalised
        # align_corners=False units where the image spans [-1, 1] exactly.
        theta = torch.zeros(batch, 2, 3, dtype=dtype)
        theta[:, 0, 0] = sign_x / zoom
        theta[:, 1, 1] = sign_y / zoom
        theta[:, 0, 2] = -sign_x / zoom * (2 * shift[:, 0])
        theta[:, 1, 2] = -sign_y / zoom * (2 * shift[:, 1])
        compute_dtype = images.dtype if images.is_floating_point() else torch.float32
        grid = F.affine_grid(
            theta.to(images.device, compute_dtype), list(images.shape), align_corners=False
        )
        out_images = F.grid_sample(
            images.to(compute_dtype),
            grid,
            mode="bilinear",
            padding_mode=self.padding_mode,
            align_corners=False,
        )
        out_boxes: list[torch.Tensor] = []
        out_classes: list[torch.Tensor] | None = [] if classes is not None else None
        size = torch.tensor([width, height], dtype=dtype)
        for b in range(batch):  # per-image box lists have different lengths
            box = boxes[b].to(dtype).reshape(-1, 4).cpu()
            centre = size / 2
            sign = torch.stack([sign_x[b], sign_y[b]])
            offset = shift[b] * size
            corners1 = sign * zoom[b] * (box[:, :2] - centre) + centre + offset
            corners2 = sign * zoom[b] * (box[:, 2:] - centre) + centre + offset
            low = torch.minimum(corners1, corners2)
            high = torch.maximum(corners1, corners2)
            area = (high - low).prod(dim=1)
            low_c = torch.maximum(low, torch.zeros(2, dtype=dtype))
            high_c = torch.minimum(high, size)
            visible = (high_c - low_c).clamp(min=0).prod(dim=1)
            keep = visible >= self.min_visible_fraction * area.clamp(min=1e-9)
            keep &= visible > 0
            result = torch.cat([low_c, high_c], dim=1)[keep]
            out_boxes.append(
                result.to(
                    device=boxes[b].device,
                    dtype=boxes[b].dtype if boxes[b].is_floating_point() else torch.float32,
                )
            )
            if out_classes is not None and classes is not None:
                out_classes.append(classes[b][keep.to(classes[b].device)])
        return out_images, out_boxes, out_classes
