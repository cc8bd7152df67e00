"""``medlens predict MODEL INPUT OUTPUT``: segment files, folders and DICOM series.

INPUT may be an image file (NIfTI, NRRD, MHA, PNG, JPEG, TIFF, DICOM file), a folder of such
files, or a DICOM series folder. Outputs follow the input names:

* a file -> OUTPUT if it has an image suffix, else ``OUTPUT/<name>`` (volumes ``.nii.gz``
  unless the input was NRRD/MHA, 2D frames ``.png``);
* a folder of files -> ``OUTPUT/<name>`` for each;
* a DICOM series -> OUTPUT (``.dcm`` = DICOM SEG referencing the series, ``.nii.gz``/``.nrrd``
  = volume), or ``OUTPUT/<folder name>.dcm`` when OUTPUT is a folder.

PNG masks of a one-class model hold 0/255 (viewable, like Kvasir's masks); multi-class 2D
models write the class values. Every output is checked before the first prediction, so an
existing file (without ``overwrite``) stops the run before anything is written.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medlens.devices import torch_device
from medlens.errors import (
    MedlensError,
    MedlensWarning,
    failed_inputs_error,
    warn_unread_subfolders,
)
from medlens.image import Image
from medlens.infer.segmentation import predict_images
from medlens.infer.statistics import label_statistics, write_statistics
from medlens.io.atomic import (
    file_stem,
    full_suffix,
    prepare_output,
    refuse_replacing_inputs,
    refuse_shared_outputs,
)
from medlens.models.segmentation import SegmentationPlan

_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg")
_FILE_SUFFIXES += (".tif", ".tiff", ".bmp")
_VOLUME_OUT = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")
_RASTER_IN = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass
class PredictionJob:
    """One input (file or DICOM folder) and where its label map goes."""

    source: Path
    output: Path
    dicom: bool = False


def load_segmenter(
    model: str | Path,
    *,
    device: str = "cpu",
    engine: str = "auto",
    cache_dir: str | Path | None = None,
) -> tuple[torch.nn.Module, SegmentationPlan, object]:
    """Network (eval mode), plan and card of a shipped segmentation model.

    ``engine``: ``torch``, ``onnx`` (ONNX Runtime on the CPU), ``onnx-int8`` (the model's
    int8 graph, :mod:`medlens.compress.quantize`) or ``auto`` (on the CPU: the int8 graph
    where the model has one, else ONNX Runtime unless the model runs bf16 there).
    """
    from medlens.compress.onnx import inference_engine
    from medlens.infer.segmentation import uses_amp
    from medlens.models.zoo import load_card, load_model

    device = str(torch_device(device))
    card = load_card(model)  # the task first: a detector's architecture is not even registered
    if card.task != "segmentation" or "plan" not in card.preprocessing:
        hint = "run it with `medlens detect`" if card.task == "detection" else ""
        raise MedlensError(
            f"model '{model}' is a {card.task or 'unknown'} model, not a segmentation model",
            hint=hint,
        )
    plan = SegmentationPlan.from_dict(card.preprocessing["plan"])
    plan.labels = {int(k): v for k, v in card.labels.items()}
    has_int8 = "int8" in card.extra
    if engine == "onnx-int8" or (engine == "auto" and device == "cpu" and has_int8):
        # the int8 graph carries its own weights (checked against the card): the float
        # weights are not loaded (~0.15 s of a single-frame run)
        from medlens.compress.quantize import int8_network
        from medlens.models.zoo import find_model

        if device != "cpu":
            raise MedlensError("--engine onnx-int8 runs on the CPU", hint="use --device cpu")
        return int8_network(find_model(model), card), plan, card
    network, card = load_model(model, device=device)
    if plan.dims == 2:  # channels-last: ~15% faster depthwise/2D convolutions on CPU
        network = network.to(memory_format=torch.channels_last)
    if engine == "auto" and uses_amp(torch.device(device), plan):
        engine = "torch"  # bf16 autocast on this CPU beats float32 ONNX Runtime
    network = inference_engine(
        network,
        torch.zeros(1, plan.in_channels, *plan.patch_size),
        engine=engine,
        device=device,
        weights_sha256=card.sha256,
        cache_dir=cache_dir,
        memory_arena=plan.dims == 2,  # 3D: whole volumes, where peak memory counts
    )
    return network, plan, card


#: plan fields an ensemble's members must share: they see the same network array and windows
_SHARED_PLAN_FIELDS = ("dims", "in_channels", "labels", "spacing_mm", "normalisation",
                       "frame_size", "patch_size")  # fmt: skip


def load_segmenters(
    models: Sequence[str | Path],
    *,
    device: str = "cpu",
    engine: str = "auto",
    cache_dir: str | Path | None = None,
) -> tuple[list[torch.nn.Module], SegmentationPlan, list[object]]:
    """:func:`load_segmenter` for each of ``models``: an ensemble whose probabilities
    ``medlens predict`` averages (nnU-Net predicts with all folds of a cross-validation).

    The members must share the preprocessing and windows of one plan (same labels, spacing,
    normalisation, frame and patch size; the architecture may differ); the first member's plan
    decides TTA and post-processing.
    """
    if not models:
        raise MedlensError("no model given", hint="name a model, or several joined by commas")
    networks, cards = [], []
    plan: SegmentationPlan | None = None
    for model in models:
        network, member_plan, card = load_segmenter(
            model, device=device, engine=engine, cache_dir=cache_dir
        )
        if plan is None:
            plan = member_plan
        else:
            for field in _SHARED_PLAN_FIELDS:
                first, other = getattr(plan, field), getattr(member_plan, field)
                if first != other:
                    raise MedlensError(
                        f"models '{models[0]}' and '{model}' differ in their plan's {field} "
                        f"({first} against {other}); an ensemble averages one set of windows",
                        hint="ensemble models trained with one plan, e.g. the folds of "
                        "`medlens train seg --fold K` on one dataset",
                    )
            if plan.size_divisor() != member_plan.size_divisor():
                raise MedlensError(
                    f"models '{models[0]}' and '{model}' need inputs divisible by "
                    f"{plan.size_divisor()} and {member_plan.size_divisor()}",
                    hint="ensemble networks of one depth (the folds of one plan)",
                )
        networks.append(network)
        cards.append(card)
    assert plan is not None
    return networks, plan, cards


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_FILE_SUFFIXES)


def _output_name(source: Path, plan: SegmentationPlan) -> str:
    suffix = full_suffix(source)
    stem = file_stem(source)
    if plan.dims == 2:
        return stem + ".png"
    if suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return stem + (".nrrd" if suffix in (".nrrd", ".nhdr") else ".mha")
    return stem + ".nii.gz"


def _has_image_suffix(path: Path) -> bool:
    return full_suffix(path) in _VOLUME_OUT + (".png", ".tif", ".tiff", ".nhdr", ".mhd")


def plan_jobs(
    source: Path, output: Path, plan: SegmentationPlan, *, overwrite: bool
) -> list[PredictionJob]:
    """Pair inputs with output paths and refuse clashes before any work is done."""
    if not source.exists():
        raise MedlensError("no such file or folder", path=source, hint="check the path")
    jobs: list[PredictionJob] = []
    if source.is_file():
        target = output if _has_image_suffix(output) else output / _output_name(source, plan)
        jobs.append(PredictionJob(source, target, dicom=source.suffix.lower() == ".dcm"))
    else:
        files = sorted(
            p for p in source.iterdir() if _is_image_file(p) and not p.name.startswith(".")
        )
        if files:
            if _has_image_suffix(output):
                raise MedlensError(
                    "INPUT is a folder of images, OUTPUT must be a folder",
                    path=output,
                    hint="pass an output folder; files keep their input names",
                )
            jobs = [PredictionJob(f, output / _output_name(f, plan)) for f in files]
        else:  # a DICOM series folder
            target = output if _has_image_suffix(output) else output / f"{source.name}.dcm"
            jobs.append(PredictionJob(source, target, dicom=True))
    refuse_shared_outputs((job.source, job.output) for job in jobs)
    refuse_replacing_inputs([job.source for job in jobs], [job.output for job in jobs])
    for job in jobs:
        if job.output.suffix.lower() == ".dcm" and not job.dicom:
            raise MedlensError(
                "DICOM SEG output needs a DICOM input series",
                path=job.output,
                hint="write .nii.gz or .png for non-DICOM inputs",
            )
        if full_suffix(job.output) in (".jpg", ".jpeg"):
            raise MedlensError(
                "label maps are not written as JPEG (lossy)", path=job.output, hint="use .png"
            )
        if plan.dims == 3 and full_suffix(job.output) == ".png":
            raise MedlensError(
                "a 3D model's output cannot be PNG",
                path=job.output,
                hint="use .nii.gz, .nrrd or .dcm",
            )
        prepare_output(job.output, overwrite=overwrite, create_folder=False)
    return jobs


def _refuse_writing_twice(outputs: list[Path]) -> None:
    """OUTPUT, ``--also``, ``--html`` and ``--stats`` must name different files: the second
    write of one path would stop the run (or replace the first) after work was done."""
    seen: set[Path] = set()
    for path in outputs:
        resolved = path.resolve()
        if resolved in seen:
            raise MedlensError(
                "OUTPUT, --also, --html and --stats would write this file twice",
                path=path,
                hint="give each of them its own file name (or folder)",
            )
        seen.add(resolved)


def _read_input(job: PredictionJob, series: str | None) -> Image:
    from medlens.io import read_image

    return read_image(job.source, series_uid=series)  # several series: asks for --series


def _to_output_image(label: Image, plan: SegmentationPlan, output: Path) -> Image:
    if full_suffix(output) in (".png", ".tif", ".tiff", ".bmp") and plan.num_classes == 2:
        return label.with_array(label.numpy() * np.uint8(255), labels=label.labels)
    return label


def _write(
    job: PredictionJob, image: Image, label: Image, plan: SegmentationPlan, *, overwrite: bool
) -> list[Path]:
    from medlens.io import write_image

    if job.output.suffix.lower() == ".dcm":
        if not np.any(label.numpy()):
            names = ", ".join(plan.labels[k] for k in plan.labels if k)
            warnings.warn(
                f"{job.source}: no {names} found; no DICOM SEG written",
                MedlensWarning,
                stacklevel=3,
            )
            return []
        write_image(label, job.output, overwrite=overwrite, reference=image)
    else:
        write_image(_to_output_image(label, plan, job.output), job.output, overwrite=overwrite)
    return [job.output]


def predict_paths(
    model: str | Path | Sequence[str | Path],
    source: str | Path,
    output: str | Path,
    *,
    device: str = "cpu",
    engine: str = "auto",
    tta: bool | None = None,
    tta_axes: Sequence[int] | None = None,
    overwrite: bool = False,
    series: str | None = None,
    batch_size: int = 8,
    postprocess: bool = True,
    progress: bool = True,
    also: Sequence[str | Path] = (),
    html: str | Path | None = None,
    stats: str | Path | None = None,
) -> list[Path]:
    """Segment every input and write the label maps; returns the written paths.

    ``model``: a model name or folder, or several (a list, or one string joined by commas):
    an ensemble whose softmax probabilities are averaged (:func:`load_segmenters`).
    ``tta``: average over the plan's mirrorings; ``None`` follows the plan's
    ``test_time_mirroring``. ``tta_axes``: the mirrored axes (default: the plan's
    ``test_time_mirror_axes``); only axes the network was trained mirrored are allowed.

    ``also``: further outputs of the same predictions (another format or folder, named like
    OUTPUT); ``html``: a page with overlays and label sizes of every input; ``stats``: a CSV
    of each input's label sizes and mean intensities (:mod:`medlens.infer.statistics`).
    """
    from rich.progress import Progress

    if isinstance(model, str):
        models: list[str | Path] = [name.strip() for name in model.split(",") if name.strip()]
    else:
        models = [model] if isinstance(model, Path) else list(model)
    device = str(torch_device(device))
    networks, plan, cards = load_segmenters(models, device=device, engine=engine)
    if tta is None:  # the plan decides (nnU-Net mirrors by default)
        tta = plan.test_time_mirroring
    if tta_axes is not None:
        trained = plan.trained_mirror_axes()
        if not tta_axes or not set(tta_axes) <= set(trained):
            raise MedlensError(
                f"--tta-axes {','.join(map(str, tta_axes))}: this model was trained mirrored "
                f"along axes {','.join(map(str, trained))} only",
                hint=f"choose axes among {','.join(map(str, trained))}",
            )
        plan.test_time_mirror_axes = list(tta_axes)
    jobs = plan_jobs(Path(source), Path(output), plan, overwrite=overwrite)
    extra = [plan_jobs(Path(source), Path(other), plan, overwrite=overwrite) for other in also]
    if Path(source).is_dir() and not jobs[0].dicom:  # once, not for each --also
        warn_unread_subfolders(Path(source))
    outputs = [job.output for job_set in [jobs, *extra] for job in job_set]
    _refuse_writing_twice([*outputs, *(Path(p) for p in (html, stats) if p is not None)])
    statistics: list[dict[str, object]] | None = None
    if stats is not None:
        stats = prepare_output(Path(stats), overwrite=overwrite, create_folder=False)
        statistics = []
    page = None
    if html is not None:
        from medlens.infer.overlay import OverlayPage

        html = prepare_output(Path(html), overwrite=overwrite, create_folder=False)
        title = str(getattr(cards[0], "name", "") or models[0])
        if len(models) > 1:
            title = f"ensemble of {len(models)}: " + ", ".join(map(str, models))
        page = OverlayPage(title, plan.labels)
    written: list[Path] = []
    failed: list[MedlensError] = []
    # one image per network call: measured on this 2-core CPU, a batch of 8 frames costs more
    # per frame than single frames (cache), see benchmarks/results/segmentation.md
    group = 1
    with Progress(disable=not progress or len(jobs) < 2, transient=True) as bar:
        task = bar.add_task("segmenting", total=len(jobs))
        for first in range(0, len(jobs), group):
            chunk = jobs[first : first + group]
            try:
                images = [_read_input(job, series) for job in chunk]
                labels = predict_images(
                    networks, images, plan, device=device, tta=tta, batch_size=batch_size,
                    postprocess=postprocess, paths=[job.source for job in chunk],
                )  # fmt: skip
            except MedlensError as error:
                if len(jobs) == 1:
                    raise
                # one bad file in a folder of frames: segment the others, name it at the end
                failed.append(error)
                bar.advance(task, len(chunk))
                continue
            for offset, (job, image, label) in enumerate(zip(chunk, images, labels, strict=True)):
                written.extend(_write(job, image, label, plan, overwrite=overwrite))
                for other in extra:
                    written.extend(
                        _write(other[first + offset], image, label, plan, overwrite=overwrite)
                    )
                if page is not None:
                    page.add(job.source.name, image, label)
                if statistics is not None:
                    rows = label_statistics(label, image)
                    statistics.extend({"input": job.source.name, **row} for row in rows)
                bar.advance(task)
    if page is not None:
        written.append(page.write(html))
    if statistics is not None and stats is not None:
        written.append(write_statistics(stats, statistics))
    if failed:
        raise failed_inputs_error(failed, total=len(jobs), task="segmented")
    return written
