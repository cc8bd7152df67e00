"""Static int8 quantisation of an exported ONNX network (ONNX Runtime, QDQ format).

Weights become per-channel int8 and activations uint8, with scales calibrated (min/max) on
real inputs. The first convolutions (stem) and the last ones (the decoder's last stage and the
head) stay float: on the polyp Lite0UNet at 320x320, quantising every convolution cost 0.009
Dice, and keeping the stem and the last 6 convolutions in fp32 cost 0.004, at 1.3x the speed of
the fp32 graph (22 against 18 frames/s end to end on a 2-core AVX2 CPU;
``benchmarks/results/polyp_input_size.md``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output


def conv_node_names(path: str | Path) -> list[str]:
    """Names of the graph's Conv nodes, in graph (execution) order."""
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]


def quantize_onnx(
    source: str | Path,
    output: str | Path,
    calibration: Iterable[np.ndarray],
    *,
    float_first: int = 1,
    float_last: int = 6,
) -> Path:
    """Write an int8 (QDQ) copy of the float ONNX graph ``source`` to ``output``.

    ``calibration``: network inputs ``(1, C, *spatial)`` float32, preprocessed exactly as at
    inference (e.g. 100 training frames). ``float_first`` / ``float_last``: how many Conv
    nodes at the start and the end of the graph stay float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = [np.ascontiguousarray(x, dtype=np.float32) for x in calibration]
    if not inputs:
        raise MedlensError("int8 quantisation needs at least one calibration input")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.remaining, None)
            return None if item is None else {"input": item}

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))  # shapes and fusions the quantiser needs
        convs = conv_node_names(prepared)
        keep = convs[:float_first] + (convs[len(convs) - float_last :] if float_last else [])
        with atomic_output(Path(output), overwrite=True) as temporary:
            quantize_static(
                str(prepared),
                str(temporary),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=keep,
            )
    return Path(output)


INT8_NAME = "model.int8.onnx"


def quantize_segmenter(
    model: str | Path,
    *,
    data: str | Path | None = None,
    frames: int = 100,
    float_first: int = 1,
    float_last: int = 6,
    overwrite: bool = False,
) -> Path:
    """Add an int8 ONNX graph (``model.int8.onnx``) to a 2D segmentation model's folder.

    Calibrates on up to ``frames`` of the model's own training frames (read from ``data``,
    default the card's ``training.data``), preprocessed as ``medlens predict`` does, and
    records the graph's sha256 and recipe under ``extra["int8"]`` in the card;
    ``medlens predict`` (``--engine auto`` or ``onnx-int8``) then runs it on the CPU.
    """
    import dataclasses

    from medlens.compress.onnx import export_onnx
    from medlens.data.segmentation import find_cases, read_case_image
    from medlens.models.segmentation import SegmentationPlan, image_to_network_array
    from medlens.models.zoo import CARD_NAME, file_sha256, find_model, load_card, load_model

    if frames < 1 or float_first < 0 or float_last < 0:
        raise MedlensError(
            "--frames must be at least 1 and --float-first/--float-last at least 0",
            hint="e.g. --frames 100 --float-first 1 --float-last 6",
        )
    folder = find_model(model)
    card = load_card(folder)  # the task first: a detector's network is not built here
    is_segmenter = card.task == "segmentation" and "plan" in card.preprocessing
    plan = SegmentationPlan.from_dict(card.preprocessing["plan"]) if is_segmenter else None
    if plan is None or plan.dims != 2 or not plan.frame_size:
        raise MedlensError(
            "int8 quantisation is measured for 2D frame models only (e.g. polyp)",
            path=folder,
            hint="3D segmenters and detectors keep the float ONNX Runtime engine",
        )
    network, card = load_model(folder)
    output = folder / INT8_NAME
    if output.exists() and not overwrite:
        raise MedlensError("the model already has an int8 graph", path=output,
                           hint="pass --overwrite to rebuild it")  # fmt: skip
    source = Path(data or card.training.get("data", ""))
    train_ids = card.training.get("split", {}).get("train", [])
    by_id = {case.case_id: case for case in find_cases(source)} if source.is_dir() else {}
    chosen = [by_id[c] for c in train_ids if c in by_id]
    if not chosen:
        raise MedlensError(
            "no training frames of this model found for calibration",
            path=source,
            hint="pass --data with the folder the model was trained on",
        )
    step = max(1, len(chosen) // frames)  # spread over the split, not its first names
    chosen = chosen[::step][:frames]
    calibration = [image_to_network_array(read_case_image(c.image), plan)[None] for c in chosen]
    with tempfile.TemporaryDirectory() as folder_tmp:
        float_graph = export_onnx(
            network, torch.zeros(1, plan.in_channels, *plan.frame_size), Path(folder_tmp) / "f.onnx"
        )
        quantize_onnx(float_graph, output, calibration, float_first=float_first,
                      float_last=float_last)  # fmt: skip
    recipe = {
        "file": INT8_NAME,
        "sha256": file_sha256(output),
        "weights_sha256": card.sha256,
        "calibration": f"{len(calibration)} training frames of {source}",
        "float_convs": {"first": float_first, "last": float_last},
        "method": "ONNX Runtime quantize_static, QDQ, per-channel int8 weights, uint8 "
        "activations, MinMax calibration",
    }
    card = dataclasses.replace(card, extra={**card.extra, "int8": recipe})
    with atomic_output(folder / CARD_NAME) as temporary:
        temporary.write_text(card.to_json())
    return output


def int8_network(folder: Path, card: object, *, threads: int | None = None) -> torch.nn.Module:
    """The model's int8 graph as an :class:`~medlens.compress.onnx.OnnxNetwork`, verified."""
    from medlens.compress.onnx import OnnxNetwork
    from medlens.models.zoo import file_sha256

    recipe = getattr(card, "extra", {}).get("int8")
    path = folder / INT8_NAME
    if not recipe or not path.is_file():
        raise MedlensError("the model has no int8 graph", path=folder,
                           hint="make one with `medlens quantize MODEL`")  # fmt: skip
    if file_sha256(path) != recipe.get("sha256") or recipe.get("weights_sha256") != getattr(
        card, "sha256", None
    ):
        raise MedlensError(
            "the int8 graph does not match the model card (changed file or retrained weights)",
            path=path,
            hint="rebuild it with `medlens quantize MODEL --overwrite`",
        )
    return OnnxNetwork(path, threads=threads)
