"""Batched training augmentation: image and label move together, seeds reproduce, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.augment import Augment, BoxAugment2D, IntensityAugment, SpatialAugment
from medlens.errors import MedlensError
from medlens.io import read_image


@pytest.fixture(scope="module")
def hippocampus_batch(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real hippocampus cases padded into 40x56x40 patches, ``[2, 1, ...]``."""
    images, labels = [], []
    for case in ("hippocampus_001", "hippocampus_003"):
        image = read_image(shared_data / "hippocampus/imagesTr" / f"{case}.nii.gz").numpy()
        label = read_image(shared_data / "hippocampus/labelsTr" / f"{case}.nii.gz").numpy()
        patch = np.zeros((1, 40, 56, 40), np.float32)
        patch_label = np.zeros((1, 40, 56, 40), np.int64)
        i, j, k = (min(a, b) for a, b in zip(image.shape[1:], (40, 56, 40), strict=True))
        patch[:, :i, :j, :k] = image[:, :i, :j, :k]
        patch_label[:, :i, :j, :k] = label[:, :i, :j, :k]
        images.append(patch / patch.max())
        labels.append(patch_label)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def test_flip_is_exactly_a_flip_of_image_and_label(hippocampus_batch) -> None:
    images, labels = hippocampus_batch
    for axis in range(3):
        augment = SpatialAugment(spatial_dims=3, flip_prob=1.0, flip_axes=(axis,), affine_prob=0)
        out_images, out_labels = augment(images, labels)
        assert torch.allclose(out_images, torch.flip(images, [2 + axis]), atol=1e-5)
        assert torch.equal(out_labels, torch.flip(labels, [2 + axis]))


def test_rot90_on_square_plane_matches_torch_rot90() -> None:
    images = torch.rand(1, 1, 6, 6, 3)
    augment = SpatialAugment(spatial_dims=3, flip_prob=0, rot90_prob=1.0, affine_prob=0)
    out, _ = augment(images, generator=torch.Generator().manual_seed(3))
    candidates = [torch.rot90(images, k, [2, 3]) for k in (1, 2, 3)]
    assert any(torch.allclose(out, c, atol=1e-5) for c in candidates)


def test_affine_elastic_keep_label_classes_integer_and_aligned(hippocampus_batch) -> None:
    images, labels = hippocampus_batch
    augment = SpatialAugment(
        spatial_dims=3,
        affine_prob=1.0,
        rotate_deg=20,
        scale=(0.9, 1.1),
        elastic_prob=1.0,
        elastic_magnitude_voxels=2.0,
    )
    # augment the label map also as an image channel: nearest label must sit where the
    # bilinear copy of the same map is (image and label share one grid)
    stacked = torch.cat([images, labels.float()], dim=1)
    out, out_labels = augment(stacked, labels, generator=torch.Generator().manual_seed(0))
    assert out_labels.dtype == torch.int64
    assert set(out_labels.unique().tolist()) <= {0, 1, 2}
    assert set(out_labels.unique().tolist()) == {0, 1, 2}  # classes survive
    agreement = (out[:, 1:].round().long() == out_labels).float().mean()
    assert agreement > 0.97
    assert not torch.equal(out_labels, labels)  # something did move


def test_same_seed_same_output_other_seed_differs(hippocampus_batch) -> None:
    images, labels = hippocampus_batch
    augment = Augment(
        spatial=SpatialAugment(spatial_dims=3, affine_prob=1.0, elastic_prob=1.0),
        intensity=IntensityAugment(
            spatial_dims=3,
            gamma_prob=1.0,
            noise_prob=1.0,
            blur_prob=1.0,
            contrast_prob=1.0,
            bias_field_prob=1.0,
            low_resolution_prob=1.0,
        ),
    )
    first = augment(images, labels, generator=torch.Generator().manual_seed(42))
    again = augment(images, labels, generator=torch.Generator().manual_seed(42))
    other = augment(images, labels, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.allclose(first[0], other[0])


def test_intensity_augment_leaves_labels_and_keeps_shape(hippocampus_batch) -> None:
    images, labels = hippocampus_batch
    augment = IntensityAugment(
        spatial_dims=3, gamma_prob=1.0, blur_prob=1.0, low_resolution_prob=1.0, noise_prob=0.0
    )
    out, out_labels = augment(images, labels, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out_labels is labels
    assert torch.isfinite(out).all()


def test_gamma_keeps_each_sample_range() -> None:
    images = torch.rand(3, 1, 8, 8) * 100 - 20
    augment = IntensityAugment(spatial_dims=2, gamma_prob=1.0, noise_prob=0.0)
    out, _ = augment(images, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.amin(dim=(1, 2, 3)), images.amin(dim=(1, 2, 3)), atol=1e-3)
    assert torch.allclose(out.amax(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3)), atol=1e-3)


def test_2d_augment_on_kvasir_frames(shared_data: Path) -> None:
    names = sorted((shared_data / "kvasir-seg/images").glob("*.jpg"))[:4]
    images = torch.stack(
        [read_image(p).tensor()[..., 0].float() / 255 for p in names]
    )  # [4, 3, I, J]
    masks = torch.stack(
        [
            (read_image(shared_data / "kvasir-seg/masks" / p.name).tensor()[:1, ..., 0] > 127).to(
                torch.uint8
            )
            for p in names
        ]
    )
    augment = Augment.default(spatial_dims=2)
    out, out_masks = augment(images, masks, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1}


def test_box_augment_moves_boxes_with_the_content() -> None:
    images = torch.zeros(8, 1, 64, 96)
    boxes = [torch.tensor([[10.0, 20.0, 30.0, 40.0]]) for _ in range(8)]
    images[:, :, 20:40, 10:30] = 1.0  # rows y 20..40, columns x 10..30
    augment = BoxAugment2D(
        horizontal_flip_prob=0.5,
        vertical_flip_prob=0.5,
        scale=(0.8, 1.2),
        translate_fraction=0.1,
        scale_prob=1.0,
        translate_prob=1.0,
    )
    out, out_boxes, out_classes = augment(
        images, boxes, [torch.tensor([0])] * 8, generator=torch.Generator().manual_seed(5)
    )
    for b in range(8):
        assert len(out_boxes[b]) == 1 and out_classes[b].tolist() == [0]
        rows, cols = torch.nonzero(out[b, 0] > 0.5, as_tuple=True)
        x1, y1, x2, y2 = out_boxes[b][0].tolist()
        assert abs(cols.min().item() - x1) <= 1.5 and abs(cols.max().item() + 1 - x2) <= 1.5
        assert abs(rows.min().item() - y1) <= 1.5 and abs(rows.max().item() + 1 - y2) <= 1.5


def test_box_leaving_the_image_is_dropped_with_its_class() -> None:
    augment = BoxAugment2D(
        horizontal_flip_prob=0, scale=(2.0, 2.0), scale_prob=1.0, translate_prob=0.0
    )
    images = torch.zeros(1, 1, 100, 100)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [45.0, 45.0, 55.0, 55.0]])]
    _, out_boxes, out_classes = augment(images, boxes, [torch.tensor([3, 7])])
    assert out_classes[0].tolist() == [7]
    assert out_boxes[0].tolist() == [[40.0, 40.0, 60.0, 60.0]]


@pytest.mark.parametrize(
    "build",
    [
        lambda: SpatialAugment(spatial_dims=4),
        lambda: SpatialAugment(spatial_dims=3, flip_prob=1.5),
        lambda: SpatialAugment(spatial_dims=3, scale=(0.0, 1.0)),
        lambda: SpatialAugment(spatial_dims=2, flip_axes=(2,)),
        lambda: IntensityAugment(gamma=(-1.0, 1.0)),
        lambda: IntensityAugment(noise_std=-0.1),
        lambda: BoxAugment2D(scale=(1.2, 0.8)),
    ],
)
def test_bad_options_are_clear_errors(build) -> None:
    with pytest.raises(MedlensError):
        build()


def test_wrong_shapes_are_clear_errors() -> None:
    augment = SpatialAugment(spatial_dims=3)
    with pytest.raises(MedlensError, match="images must be"):
        augment(torch.rand(1, 8, 8, 8))
    with pytest.raises(MedlensError, match="labels"):
        augment(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 4))
    with pytest.raises(MedlensError, match="rot90"):
        SpatialAugment(spatial_dims=2, rot90_prob=1.0)(torch.rand(1, 1, 8, 9))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_for_the_same_seed(hippocampus_batch) -> None:
    images, labels = hippocampus_batch
    augment = SpatialAugment(spatial_dims=3, affine_prob=1.0, elastic_prob=0.0)
    cpu = augment(images, labels, generator=torch.Generator().manual_seed(0))
    gpu = augment(images.cuda(), labels.cuda(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-4)
    assert (cpu[1] == gpu[1].cpu()).float().mean() > 0.999


def test_fused_grid_reproduces_the_affine_map_exactly() -> None:
    """The grid is built at control points and spline-upsampled: the affine part is exact."""
    import torch.nn.functional as F

    augment = SpatialAugment(spatial_dims=3, affine_prob=1.0, shear=0.1, translate_voxels=3)
    shape = (20, 24, 28)
    matrices = augment.sample_matrices(2, shape, torch.Generator().manual_seed(7))
    grid = augment.sampling_grid(
        2, shape, device=torch.device("cpu"), generator=torch.Generator().manual_seed(7)
    )
    half = (torch.tensor(list(reversed(shape)), dtype=torch.float64) - 1) / 2
    theta = torch.cat(
        [
            matrices[:, :, :3] * half[None, None, :] / half[None, :, None],
            (matrices[:, :, 3] / half[None, :])[:, :, None],
        ],
        dim=2,
    )
    expected = F.affine_grid(theta.float(), [2, 1, *shape], align_corners=True)
    assert torch.allclose(grid, expected, atol=1e-5)


def test_one_grid_sample_per_tensor_per_batch(monkeypatch, hippocampus_batch) -> None:
    """flip + rot90 + affine + elastic cost one resampling of the images and one of the labels,
    for the whole batch (no per-sample or per-transform resampling)."""
    import torch.nn.functional as F

    calls = []
    original = F.grid_sample

    def counting(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", counting)
    images, labels = hippocampus_batch
    augment = SpatialAugment(
        spatial_dims=3, flip_prob=1.0, affine_prob=1.0, elastic_prob=1.0, rot90_prob=1.0
    )
    augment(images[:, :, :40, :40, :40], labels[:, :, :40, :40, :40])
    assert calls == ["bilinear", "nearest"]


def test_augment_settings_round_trip_through_plain_values() -> None:
    import yaml

    augment = Augment.default(spatial_dims=3)
    loaded = Augment.from_dict(yaml.safe_load(yaml.safe_dump(augment.to_dict())))
    assert loaded == augment
    images = torch.rand(2, 1, 12, 12, 12)
    first = augment(images, generator=torch.Generator().manual_seed(3))[0]
    second = loaded(images, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(first, second)
    with pytest.raises(MedlensError, match="unknown spatial"):
        Augment.from_dict({"spatial": {"spatial_dims": 3, "rotate": 5}})


def test_colour_augment_keeps_grey_pixels_grey_under_saturation_and_gains_per_channel() -> None:
    from medlens.augment import ColourAugment

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    grey = (torch.full((4, 3, 8, 8), 100.0) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    saturate = ColourAugment(mean=mean, std=std, gain_prob=0.0, saturation_prob=1.0)
    out, _ = saturate(grey.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, grey, atol=1e-4)  # saturation leaves grey alone
    balance = ColourAugment(mean=mean, std=std, gain_prob=1.0, saturation_prob=0.0)
    out, _ = balance(grey.clone(), generator=torch.Generator().manual_seed(0))
    pixels = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    gains = pixels[:, :, 0, 0] / 100.0
    assert ((gains >= 0.85 - 1e-4) & (gains <= 1.15 + 1e-4)).all()
    assert (gains[:, 0] - gains[:, 2]).abs().max() > 1e-3  # channels change independently


def test_colour_augment_refuses_non_rgb_input() -> None:
    from medlens.augment import ColourAugment

    augment = ColourAugment(mean=[0, 0, 0], std=[1, 1, 1])
    with pytest.raises(MedlensError, match="RGB frames"):
        augment(torch.zeros(2, 1, 8, 8))
    with pytest.raises(MedlensError, match="positive stds"):
        ColourAugment(mean=[0, 0, 0], std=[1, 0, 1])
