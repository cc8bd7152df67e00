"""Deterministic preprocessing on real data: geometry kept, labels kept, YAML round trip,
torch path agrees with the CPU libraries, bad input gives clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.io import read_image
from medlens.preprocess import (
    CLAHE,
    CT_WINDOWS,
    REGISTRY,
    BilateralFilter,
    BrightnessContrast,
    ClipPercentiles,
    CropForeground,
    CTWindow,
    CurvatureAnisotropicDiffusion,
    Gamma,
    GaussianFilter,
    GrayWorld,
    HistogramEqualize,
    HistogramMatch,
    MedianFilter,
    N4BiasCorrection,
    NonLocalMeans,
    PadCrop,
    PercentileScale,
    Pipeline,
    RemoveBackground,
    Reorient,
    RepairCorruptSlices,
    RepairNonFinite,
    Resample,
    SpecularInpaint,
    UnsharpMask,
    WhitePatch,
    ZScore,
    preset,
    specular_mask,
)

NAMES = {1: "anterior", 2: "posterior"}


@pytest.fixture(scope="module")
def case(shared_data: Path) -> tuple[Image, Image]:
    """A real hippocampus MRI and its label map (classes 0, 1, 2)."""
    image = read_image(shared_data / "hippocampus/imagesTr/hippocampus_004.nii.gz")
    label = read_image(shared_data / "hippocampus/labelsTr/hippocampus_004.nii.gz")
    return image, label.with_array(label.array, labels=NAMES)


@pytest.fixture(scope="module")
def kvasir_frame(shared_data: Path) -> Image:
    path = sorted((shared_data / "kvasir-seg/images").glob("*.jpg"))[0]
    return read_image(path)


def centroid_mm(label: Image, value: int) -> np.ndarray:
    """World (LPS mm) centroid of one class."""
    index = np.argwhere(label.numpy()[0] == value).mean(axis=0)
    return label.index_to_world(index)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("interpolation", ["nearest", "one_hot_linear"])
def test_resample_keeps_each_class_on_the_same_anatomy(case, interpolation) -> None:
    _, label = case
    resampled = Resample(spacing_mm=(0.7, 1.6, 1.2), label_interpolation=interpolation)(label)
    assert np.allclose(resampled.spacing_mm, (0.7, 1.6, 1.2))
    assert resampled.dtype == label.dtype  # integer stays integer
    assert set(np.unique(resampled.numpy())) == {0, 1, 2}
    for value in (1, 2):
        # centroid moves by less than one (coarse) voxel
        assert np.linalg.norm(centroid_mm(resampled, value) - centroid_mm(label, value)) < 1.0


def test_resample_image_float32_same_field_of_view(case) -> None:
    image, _ = case
    out = Resample(spacing_mm=2.0)(image)
    assert out.dtype == np.float32
    extent_in = np.array(image.spatial_shape) * image.spacing_mm
    extent_out = np.array(out.spatial_shape) * out.spacing_mm
    assert np.all(np.abs(extent_in - extent_out) <= 1.0)
    assert np.allclose(out.origin_mm, image.origin_mm)
    # a voxel's value is the image value at the same world position (interior voxel)
    world = out.index_to_world([5, 6, 7])
    assert np.allclose(image.world_to_index(world), [10, 12, 14])
    assert out.numpy()[0, 5, 6, 7] == pytest.approx(float(image.numpy()[0, 10, 12, 14]))


def test_bspline_resampling_runs_and_stays_close_to_linear(case) -> None:
    image, _ = case
    linear = Resample(spacing_mm=0.8)(image).numpy()
    spline = Resample(spacing_mm=0.8, interpolation="bspline")(image).numpy()
    assert spline.shape == linear.shape
    assert np.corrcoef(linear.ravel(), spline.ravel())[0, 1] > 0.98


def test_reorient_moves_no_anatomy_and_round_trips_exactly(case) -> None:
    image, label = case
    assert image.orientation_code() == "RAS"
    lps = Reorient(orientation="LPS")(label)
    assert lps.orientation_code() == "LPS"
    for value in (1, 2):
        assert np.allclose(centroid_mm(lps, value), centroid_mm(label, value), atol=1e-6)
    pil = Reorient(orientation="PIL")(label)  # a permutation too
    assert pil.orientation_code() == "PIL"
    assert np.allclose(centroid_mm(pil, 1), centroid_mm(label, 1), atol=1e-6)
    back = Reorient(orientation="RAS")(pil)
    assert np.array_equal(back.numpy(), label.numpy())
    assert np.allclose(back.affine, label.affine)


def test_crop_foreground_and_pad_crop_keep_world_positions(case) -> None:
    image, label = case
    pipeline = Pipeline([CropForeground(threshold=0, margin_voxels=1), PadCrop(size=(48, 48, 48))])
    out_image, out_label = pipeline(image, label=label)
    assert out_image.spatial_shape == out_label.spatial_shape == (48, 48, 48)
    assert out_image.same_grid(out_label)
    for value in (1, 2):
        assert np.allclose(centroid_mm(out_label, value), centroid_mm(label, value), atol=1e-6)
    assert (out_label.numpy() > 0).sum() == (label.numpy() > 0).sum()  # nothing cut off


def test_pipeline_moves_image_and_label_alike(case) -> None:
    image, label = case
    pipeline = Pipeline(
        [
            Reorient(orientation="LPS"),
            Resample(spacing_mm=1.3),
            ZScore(foreground_only=True),
            CropForeground(margin_voxels=2),
        ]
    )
    out_image, out_label = pipeline(image, label=label)
    assert out_image.same_grid(out_label)
    assert out_label.labels == NAMES and set(np.unique(out_label.numpy())) == {0, 1, 2}
    assert [s["transform"] for s in out_image.metadata["provenance"]] == [
        "reorient",
        "resample",
        "z_score",
        "crop_foreground",
    ]
    assert "provenance" not in image.metadata  # the input is untouched


# --------------------------------------------------------------------------- pipelines
def test_yaml_round_trip_gives_identical_output(case, tmp_path: Path) -> None:
    image, _ = case
    pipeline = Pipeline(
        [
            RepairNonFinite(),
            Resample(spacing_mm=(1.1, 0.9, 1.3), interpolation="bspline"),
            GaussianFilter(sigma_mm=0.7),
            PercentileScale(low=1, high=99),
            CLAHE(clip_limit=0.02),
            UnsharpMask(sigma_mm=1.0, amount=0.5),
        ],
        name="round-trip",
    )
    path = pipeline.save(tmp_path / "pipeline.yaml")
    loaded = Pipeline.load(path)
    assert loaded.to_yaml() == pipeline.to_yaml() and loaded.name == "round-trip"
    first, second = pipeline(image), loaded(image)
    assert np.array_equal(first.numpy(), second.numpy())
    assert [
        {k: v for k, v in s.items() if k != "seconds"} for s in first.metadata["provenance"]
    ] == [{k: v for k, v in s.items() if k != "seconds"} for s in second.metadata["provenance"]]


def test_every_registered_transform_round_trips_through_yaml() -> None:
    for name, cls in REGISTRY.items():
        options = {"reference": "x.nii.gz"} if name == "histogram_match" else {}
        if name == "ct_window":
            options = {"window": "lung"}
        transform = cls(**options)
        loaded = Pipeline.from_yaml(Pipeline([transform]).to_yaml()).transforms[0]
        assert loaded.to_dict() == transform.to_dict(), name


def test_presets_load() -> None:
    for name in ("ct", "mri", "endoscopy"):
        assert preset(name).transforms
    assert Pipeline.load("mri").name == "mri"


def test_unknown_transform_lists_valid_names(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("transforms:\n  - name: sharpen_magic\n")
    with pytest.raises(MedlensError, match="sharpen_magic") as error:
        Pipeline.load(path)
    assert "resample" in str(error.value) and "z_score" in str(error.value)
    path.write_text("transforms:\n  - name: gaussian\n    sigma: 2\n")
    with pytest.raises(MedlensError, match="valid options: sigma_mm"):
        Pipeline.load(path)


@pytest.mark.parametrize(
    ("yaml_item", "message"),
    [
        ("{name: gaussian, sigma_mm: -1}", "sigma_mm must be > 0"),
        ("{name: ct_window, level: 40, width: 0}", "width must be > 0"),
        ("{name: resample, spacing_mm: 0}", "spacing_mm must be > 0"),
        ("{name: resample, spacing_mm: [1, 0, 1]}", "spacing_mm must be > 0"),
        ("{name: ct_window, window: brian}", "brain"),
        ("{name: reorient, orientation: RAR}", "one of each pair"),
        ("{name: percentile_scale, low: 90, high: 10}", "percentiles"),
    ],
)
def test_out_of_range_parameters_are_clear_errors(yaml_item, message) -> None:
    with pytest.raises(MedlensError, match=message):
        Pipeline.from_yaml(f"transforms:\n  - {yaml_item}\n")


@pytest.mark.parametrize("transform", [GrayWorld(), WhitePatch(), SpecularInpaint()])
def test_colour_transforms_refuse_single_channel_images(case, transform) -> None:
    image, _ = case
    with pytest.raises(MedlensError, match="RGB"):
        transform(image)


# --------------------------------------------------------------------------- torch path
def _as_tensor(image: Image, device: str = "cpu") -> Image:
    return image.with_array(image.tensor().float().to(device))


def test_torch_path_matches_cpu_libraries(case) -> None:
    """Tolerances: resampling 1e-4 x range, Gaussian 1e-4 x range, median exact, z-score 1e-5."""
    image, label = case
    value_range = float(image.numpy().max())
    numpy_image = image.with_array(image.numpy().astype(np.float32))
    tensor_image = _as_tensor(image)
    for transform, tolerance in (
        (Resample(spacing_mm=(0.7, 1.3, 0.9)), 1e-4 * value_range),
        (GaussianFilter(sigma_mm=1.5), 1e-4 * value_range),
        (MedianFilter(radius_voxels=1), 0.0),
        (ZScore(), 1e-5),
        (ZScore(foreground_only=True), 1e-5),
    ):
        expected = transform(numpy_image).numpy()
        actual = transform(tensor_image).array
        assert isinstance(actual, torch.Tensor)
        assert np.abs(expected - actual.numpy()).max() <= tolerance, transform.name
    # nearest labels: identical except at exact half-voxel ties (15 * 0.7 = 10.5), where
    # ITK's rounding depends on float error in its index computation
    nearest = Resample(spacing_mm=(0.7, 1.3, 0.9))
    agreement = np.mean(nearest(label).numpy() == nearest(label.with_array(label.tensor())).numpy())
    assert agreement > 0.995


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu(case) -> None:
    image, _ = case
    for transform in (Resample(spacing_mm=0.8), GaussianFilter(sigma_mm=1.0), ZScore()):
        cpu = transform(_as_tensor(image)).numpy()
        gpu = transform(_as_tensor(image, "cuda")).array.cpu().numpy()
        assert np.abs(cpu - gpu).max() <= 1e-3 * max(1.0, float(np.abs(cpu).max()))


# --------------------------------------------------------------------------- cleaning
def test_nan_and_inf_are_repaired(case) -> None:
    image, _ = case
    values = image.numpy().astype(np.float32).copy()
    values[0, 3, 4, 5], values[0, 6, 7, 8], values[0, 1, 1, 1] = np.nan, np.inf, -np.inf
    repaired = RepairNonFinite(fill="median")(image.with_array(values)).numpy()
    assert np.isfinite(repaired).all()
    assert repaired[0, 6, 7, 8] == values[np.isfinite(values)].max()


def test_corrupt_slices_are_found_and_repaired(case) -> None:
    image, _ = case
    clean = image.numpy().astype(np.float32)
    broken = clean.copy()
    broken[..., 10] = 0.0  # blank
    broken[..., 20] = broken[..., 19]  # duplicated
    broken[..., 25] *= 3.0  # intensity jump
    repaired = RepairCorruptSlices()(image.with_array(broken))
    found = repaired.metadata["corrupt_slices"]
    assert found["blank"] == [10] and found["duplicated"] == [20]
    assert found["intensity_jump"] == [25]
    error_before = np.abs(broken - clean)[..., [10, 25]].mean()
    error_after = np.abs(repaired.numpy() - clean)[..., [10, 25]].mean()
    assert error_after < 0.3 * error_before
    # a clean scan is left alone
    untouched = RepairCorruptSlices()(image)
    assert not any(untouched.metadata["corrupt_slices"].values())


def test_clip_percentiles_and_scaling(case) -> None:
    image, _ = case
    clipped = ClipPercentiles(low=1, high=99)(image).numpy()
    low, high = np.percentile(image.numpy(), [1, 99])
    assert clipped.min() >= low and clipped.max() <= high
    scaled = PercentileScale()(image).numpy()
    assert scaled.min() == 0.0 and scaled.max() == 1.0


def synthetic_ct() -> Image:
    """64^2 x 8 CT: air, a body ellipse with lungs, and a table under it."""
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    body = ((i - 32) / 24.0) ** 2 + ((j - 28) / 16.0) ** 2 < 1
    lung = ((i - 24) / 5.0) ** 2 + ((j - 28) / 6.0) ** 2 < 1
    table = (j >= 50) & (j <= 52) & (np.abs(i - 32) < 30)
    slab = np.full((64, 64), -1000, np.int16)
    slab[body], slab[lung], slab[table] = 40, -800, 300
    return Image(np.repeat(slab[None, :, :, None], 8, axis=3), spacing_mm=(1, 1, 2), modality="CT")


def test_ct_table_and_background_removed_body_kept() -> None:
    ct = synthetic_ct()
    cleaned = RemoveBackground()(ct).numpy()[0]
    original = ct.numpy()[0]
    assert (cleaned[original == 300] == -1024).all()  # table gone
    assert (cleaned[original == 40] == 40).all()  # body kept
    assert (cleaned[original == -800] == -800).all()  # lungs inside the body kept


def test_ct_windows_by_name_and_level_width() -> None:
    assert set(CT_WINDOWS) == {
        "brain", "subdural", "stroke", "lung", "mediastinum", "abdomen", "liver", "bone",
    }  # fmt: skip
    ct = synthetic_ct()
    lung = CTWindow(window="lung")(ct).numpy()
    assert lung.dtype == np.float32 and lung.min() >= 0 and lung.max() <= 1
    brain = CTWindow(level=40, width=80, output="hu")(ct).numpy()
    assert brain.min() == 0 and brain.max() == 80


# --------------------------------------------------------------------------- filters
@pytest.fixture(scope="module")
def noisy(case) -> tuple[np.ndarray, Image]:
    image, _ = case
    clean = image.numpy().astype(np.float32)[:, :, :, 8:20]
    rng = np.random.default_rng(0)
    # noise std 100 on a 0..2250 scan (half the tissue contrast)
    noisy = clean + rng.normal(0, 100, clean.shape).astype(np.float32)
    return clean, image.with_array(noisy)


@pytest.mark.parametrize(
    "denoise",
    [
        GaussianFilter(sigma_mm=0.8),
        MedianFilter(radius_voxels=1),
        BilateralFilter(sigma_mm=1.0, range_sigma=200),
        NonLocalMeans(strength=0.8),
        CurvatureAnisotropicDiffusion(iterations=5),
    ],
)
def test_denoising_filters_bring_noisy_mri_closer_to_clean(noisy, denoise) -> None:
    clean, image = noisy
    out = denoise(image).numpy()
    assert out.shape == clean.shape
    assert np.abs(out - clean).mean() < 0.85 * np.abs(image.numpy() - clean).mean()


def test_n4_removes_a_smooth_bias_field(case) -> None:
    image, label = case
    values = image.numpy().astype(np.float32)
    i = np.linspace(-1, 1, values.shape[1])[:, None, None]
    biased = values * (1 + 0.4 * i)  # 40% left-right intensity ramp
    corrected = N4BiasCorrection(shrink_factor=2, iterations=(20, 20))(image.with_array(biased))
    tissue = label.numpy()[0] > 0

    def spread(data: np.ndarray) -> float:
        return float(data[0][tissue].std() / data[0][tissue].mean())

    assert spread(corrected.numpy()) < spread(biased)


def test_histogram_matching_moves_towards_reference(shared_data: Path, case) -> None:
    image, _ = case
    reference_path = shared_data / "hippocampus/imagesTr/hippocampus_001.nii.gz"
    reference = read_image(reference_path).numpy().astype(np.float32)
    darker = image.with_array(image.numpy().astype(np.float32) * 0.5)
    matched = HistogramMatch(reference=str(reference_path))(darker).numpy()
    target = np.percentile(reference, 75)
    assert abs(np.percentile(matched, 75) - target) < abs(
        np.percentile(darker.numpy(), 75) - target
    )


# --------------------------------------------------------------------------- enhancement
def test_clahe_2d_and_3d_histogram_equalisation_gamma_unsharp(case, kvasir_frame) -> None:
    image, _ = case
    for source in (image, kvasir_frame):
        out = CLAHE()(source).numpy()
        assert out.shape == source.array.shape and out.min() >= 0 and out.max() <= 1
    equalised = HistogramEqualize()(image).numpy()
    assert abs(float(np.median(equalised)) - 0.5) < 0.1  # flat histogram: median near 0.5
    brighter = Gamma(gamma=0.5)(image).numpy()
    assert brighter.mean() > image.numpy().mean()
    assert brighter.max() == pytest.approx(float(image.numpy().max()))
    sharp = UnsharpMask(sigma_mm=1.0, amount=1.0)(image).numpy()
    assert (
        np.abs(np.diff(sharp, axis=1)).mean()
        > np.abs(np.diff(image.numpy().astype(float), axis=1)).mean()
    )


# --------------------------------------------------------------------------- colour
def test_gray_world_and_white_patch_balance_a_colonoscopy_frame(kvasir_frame) -> None:
    assert kvasir_frame.num_channels == 3 and kvasir_frame.dtype == np.uint8
    means = kvasir_frame.numpy().reshape(3, -1).mean(axis=1)
    assert means.max() / means.min() > 1.5  # colonoscopy frames are red
    balanced = GrayWorld()(kvasir_frame).numpy()
    assert balanced.dtype == np.uint8
    new_means = balanced.reshape(3, -1).mean(axis=1)
    assert new_means.max() / new_means.min() < means.max() / means.min()
    white = WhitePatch(percentile=99)(kvasir_frame).numpy()
    assert np.all(np.percentile(white.reshape(3, -1), 99, axis=1) >= 250)
    brighter = BrightnessContrast(brightness=20, contrast=1.2)(kvasir_frame).numpy()
    assert brighter.astype(float).mean() > kvasir_frame.numpy().astype(float).mean()


def test_specular_highlights_detected_and_inpainted(kvasir_frame) -> None:
    values = kvasir_frame.numpy().copy()
    values[:, 100:106, 120:126] = 255  # a white specular spot (x 100..106, y 120..126)
    frame = kvasir_frame.with_array(values)
    mask = specular_mask(frame)  # (H, W) = (y, x)
    assert mask[120:126, 100:106].all()
    out = SpecularInpaint()(frame)
    spot = out.numpy()[:, 101:105, 121:125].astype(float)
    assert spot.mean() < 230  # filled from the surrounding (red) tissue
    assert 0 < out.metadata["specular_fraction"] < 0.2


# --------------------------------------------------------------------------- CLI
def test_cli_preprocess_folder_with_yaml(shared_data: Path, tmp_path: Path, capsys) -> None:
    from medlens.cli import main

    source = tmp_path / "in"
    source.mkdir()
    for name in ("hippocampus_001", "hippocampus_003"):
        (source / f"{name}.nii.gz").write_bytes(
            (shared_data / "hippocampus/imagesTr" / f"{name}.nii.gz").read_bytes()
        )
    pipeline = Pipeline([Reorient(orientation="LPS"), Resample(spacing_mm=1.5), ZScore()])
    pipeline_path = pipeline.save(tmp_path / "chain.yaml")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(source), str(out), "--pipeline", str(pipeline_path)])
    assert exit_info.value.code in (0, None)
    written = read_image(out / "hippocampus_001.nii.gz")
    assert written.orientation_code() == "LPS" and np.allclose(written.spacing_mm, 1.5)
    assert abs(float(written.numpy().mean())) < 1e-3
    provenance = json.loads((out / "provenance.json").read_text())
    assert (
        len(provenance["images"]) == 2
        and provenance["pipeline"]["transforms"][1]["name"] == "resample"
    )
    # again without --overwrite: exit code 2, one line, nothing rewritten
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(source), str(out), "--pipeline", str(pipeline_path)])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_bad_image_in_a_folder_is_named_after_the_others_are_preprocessed(
    shared_data: Path, tmp_path: Path, capsys
) -> None:
    from medlens.cli import main

    source = tmp_path / "in"
    source.mkdir()
    for name in ("hippocampus_001", "hippocampus_003"):
        (source / f"{name}.nii.gz").write_bytes(
            (shared_data / "hippocampus/imagesTr" / f"{name}.nii.gz").read_bytes()
        )
    (source / "hippocampus_002.nii.gz").write_bytes(b"not gzip")  # sorted between the two
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(source), str(out), "--pipeline", "mri"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "1 of 3 inputs could not be preprocessed" in err and "hippocampus_002.nii.gz" in err
    provenance = json.loads((out / "provenance.json").read_text())
    assert sorted(Path(p).name for p in provenance["images"]) == [
        "hippocampus_001.nii.gz",
        "hippocampus_003.nii.gz",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "hippocampus_001.nii.gz",
        "hippocampus_003.nii.gz",
        "provenance.json",
    ]


def test_a_dicom_series_folder_inside_an_image_folder_is_named_once(
    examples: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    from medlens.cli import main

    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(examples / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz", source)
    shutil.copytree(examples / "dicom" / "hippocampus-study1", source / "study1")
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(source), str(tmp_path / "out"), "--pipeline", "mri"])
    assert exit_info.value.code in (0, None)
    err = capsys.readouterr().err
    assert err.count("1 folder(s) of DICOM files not read (study1)") == 1
    assert (tmp_path / "out" / "hippocampus_001.nii.gz").is_file()


def test_cli_bad_pipeline_exits_2(shared_data: Path, tmp_path: Path, capsys) -> None:
    from medlens.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("transforms:\n  - name: nope\n")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "preprocess",
                str(shared_data / "hippocampus/imagesTr/hippocampus_001.nii.gz"),
                str(tmp_path / "out.nii.gz"),
                "--pipeline",
                str(bad),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown transform 'nope'" in err and "crop_foreground" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_tensor_images_stay_tensors_through_numpy_only_steps(case) -> None:
    image, _ = case
    pipeline = Pipeline([Resample(spacing_mm=1.2), CLAHE(), ZScore()])
    out = pipeline(image.with_array(image.tensor().float()))
    assert isinstance(out.array, torch.Tensor) and out.array.dtype == torch.float32
    reference = pipeline(image.with_array(image.numpy().astype(np.float32)))
    assert np.abs(out.numpy() - reference.numpy()).max() < 1e-2


def test_cli_preprocess_single_frame_with_endoscopy_preset(kvasir_frame, tmp_path: Path) -> None:
    from medlens.cli import main

    source = Path(kvasir_frame.metadata["path"])
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(source), str(tmp_path / "frame.png"), "--pipeline", "endoscopy"])
    assert exit_info.value.code in (0, None)
    out = read_image(tmp_path / "frame.png")
    assert out.array.shape == kvasir_frame.array.shape
    steps = json.loads((tmp_path / "frame.png.provenance.json").read_text())
    assert [s["transform"] for s in steps["images"][str(tmp_path / "frame.png")]["steps"]] == [
        "specular_inpaint",
        "gray_world",
    ]


def test_z_score_inside_the_label_mask(case) -> None:
    image, label = case
    out, _ = Pipeline([ZScore(label_mask=True)])(image, label=label)
    inside = out.numpy()[0][label.numpy()[0] > 0]
    assert abs(float(inside.mean())) < 1e-4 and abs(float(inside.std()) - 1) < 1e-4
