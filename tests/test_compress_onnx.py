"""ONNX export and the ONNX Runtime engine: same outputs as PyTorch, cached once, CLI switch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_runner import run_cli

from medlens.compress.onnx import (
    OnnxNetwork,
    cached_onnx_network,
    export_onnx,
    inference_engine,
)
from medlens.errors import MedlensError
from medlens.infer.segmentation import dice_per_class

ROOT = Path(__file__).resolve().parents[1]


def test_detector_export_reproduces_every_output_at_other_batch_and_image_sizes(
    tmp_path: Path,
) -> None:
    from medlens.detect.model import CenterNetDetector

    torch.manual_seed(0)
    network = CenterNetDetector(num_classes=2, box_encoding="ltrb").eval()
    path = export_onnx(network, torch.rand(1, 1, 128, 128), tmp_path / "det.onnx")
    engine = OnnxNetwork(path, threads=1)
    x = torch.rand(3, 1, 96, 160)  # traced at 1x128x128: batch and spatial axes are dynamic
    with torch.inference_mode():
        expected = network(x)
    got = engine(x.contiguous(memory_format=torch.channels_last))
    assert set(got) == {"heatmap", "ltrb"}
    for name in got:
        assert got[name].shape == expected[name].shape
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)
    assert network.training is False


def test_segmentation_network_export_returns_a_tensor_like_the_module(tmp_path: Path) -> None:
    from medlens.models.lite_unet import Lite0UNet

    torch.manual_seed(0)
    network = Lite0UNet(in_channels=3, out_channels=2).train()
    path = export_onnx(network, torch.rand(1, 3, 64, 64), tmp_path / "seg.onnx")
    assert network.training  # the caller's mode comes back
    network.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        expected = network(x)
    got = OnnxNetwork(path, threads=1)(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_cache_exports_once_per_weights_digest(tmp_path: Path) -> None:
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1)).eval()
    example = torch.rand(1, 1, 16, 16)
    cached_onnx_network(network, example, weights_sha256="a" * 64, cache_dir=tmp_path)
    (first,) = tmp_path.glob("*.onnx")
    stamp = first.stat().st_mtime_ns
    cached_onnx_network(network, example, weights_sha256="a" * 64, cache_dir=tmp_path)
    assert first.stat().st_mtime_ns == stamp  # reused, not exported again
    cached_onnx_network(network, example, weights_sha256="b" * 64, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # changed weights: a new graph
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_engine_choice_and_its_errors(tmp_path: Path) -> None:
    network = torch.nn.Conv2d(1, 1, 1).eval()
    example = torch.rand(1, 1, 8, 8)
    options = {"weights_sha256": "c" * 64, "cache_dir": tmp_path}
    assert inference_engine(network, example, engine="torch", **options) is network
    assert inference_engine(network, example, engine="auto", device="cuda", **options) is network
    assert isinstance(inference_engine(network, example, engine="auto", **options), OnnxNetwork)
    with pytest.raises(MedlensError, match="unknown engine 'fast'"):
        inference_engine(network, example, engine="fast", **options)
    with pytest.raises(MedlensError, match="runs on the CPU"):
        inference_engine(network, example, engine="onnx", device="cuda", **options)


def test_3d_segmenters_run_without_the_memory_arena(tmp_path: Path) -> None:
    """ONNX Runtime's arena keeps the largest activations it saw: on whole 3D volumes that is
    peak memory for no speed (benchmarks/results/segmentation.md), so 3D models go without."""
    from medlens.infer.predict import load_segmenter

    if not (ROOT / "models" / "hippocampus" / "model.json").is_file():
        pytest.skip("models/hippocampus not trained yet")
    network, plan, _ = load_segmenter("hippocampus", engine="onnx", cache_dir=tmp_path)
    assert plan.dims == 3 and isinstance(network, OnnxNetwork)
    assert not network.session.get_session_options().enable_cpu_mem_arena
    two_d = inference_engine(
        torch.nn.Conv2d(1, 1, 1).eval(), torch.rand(1, 1, 8, 8), weights_sha256="d" * 64,
        cache_dir=tmp_path,
    )  # fmt: skip
    assert two_d.session.get_session_options().enable_cpu_mem_arena


def outputs_per_engine(
    command: str, model: str, source: Path, tmp_path: Path, pattern: str, read: Callable
) -> tuple[dict, dict]:
    """Run ``medlens COMMAND MODEL SOURCE OUT`` with each engine; ``read`` loads the outputs.

    Returns the PyTorch and the ONNX Runtime outputs by file name (the same non-empty names).
    """
    if not (ROOT / "models" / model / "model.json").is_file():
        pytest.skip(f"models/{model} not trained yet")
    outputs = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        assert run_cli([command, model, str(source), str(out), "--engine", engine]) == 0
        outputs[engine] = {p.name: read(p) for p in sorted(out.glob(pattern))}
    assert outputs["torch"].keys() == outputs["onnx"].keys() and outputs["torch"]
    return outputs["torch"], outputs["onnx"]


def test_detect_gives_the_same_stones_with_onnx_runtime_and_pytorch(
    examples: Path, tmp_path: Path
) -> None:
    images = examples / "kidney-stones" / "images"
    torch_records, onnx_records = outputs_per_engine(
        "detect", "kidney-stones", images, tmp_path, "*.json", lambda p: json.loads(p.read_text())
    )
    for name, record in torch_records.items():
        theirs = onnx_records[name]["boxes"]
        assert len(record["boxes"]) == len(theirs)
        for ours, other in zip(record["boxes"], theirs, strict=True):
            assert np.allclose(ours["xyxy_px"], other["xyxy_px"], atol=0.05)
            assert abs(ours["score"] - other["score"]) < 1e-3


def test_predict_gives_the_same_polyp_masks_with_onnx_runtime_and_pytorch(
    examples: Path, tmp_path: Path
) -> None:
    frames = examples / "kvasir" / "images"
    torch_masks, onnx_masks = outputs_per_engine(
        "predict",
        "polyp",
        frames,
        tmp_path,
        "*",
        lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED),
    )
    for name, mask in torch_masks.items():
        differing = np.mean(mask != onnx_masks[name])
        assert differing < 1e-4, name  # float rounding may flip a boundary pixel, no more
        assert mask.any()


def test_shipped_polyp_model_runs_its_verified_int8_graph_by_default_on_the_cpu(
    examples: Path, tmp_path: Path
) -> None:
    """``--engine auto`` picks the card's int8 graph (sha256-checked); its masks agree with the
    float graph's on the bundled frames and both find the polyps."""
    from medlens.compress.quantize import INT8_NAME
    from medlens.infer.predict import load_segmenter

    card = json.loads((ROOT / "models" / "polyp" / "model.json").read_text())
    if "int8" not in card["extra"]:
        pytest.skip("the shipped polyp model has no int8 graph")
    network, _, _ = load_segmenter("polyp", engine="auto")
    assert Path(network.path).name == INT8_NAME
    frames = examples / "kvasir" / "images"
    masks = {}
    for engine in ("auto", "onnx"):
        out = tmp_path / engine
        assert run_cli(["predict", "polyp", str(frames), str(out), "--engine", engine]) == 0
        masks[engine] = {p.name: cv2.imread(str(p), 0) > 0 for p in sorted(out.glob("*.png"))}
    assert masks["auto"].keys() == masks["onnx"].keys() and masks["auto"]

    def dice(mask: np.ndarray, other: np.ndarray) -> float:
        return dice_per_class(mask, other, [True])[0]

    int8_scores = []
    for name, int8 in masks["auto"].items():
        truth = cv2.imread(str(examples / "kvasir" / "masks" / (Path(name).stem + ".jpg")), 0) > 127
        float_mask = masks["onnx"][name]
        assert dice(int8, float_mask) > 0.95, name
        # int8 loses no accuracy on any frame (one frame is hard for both: Dice ~0.70)
        assert dice(int8, truth) > dice(float_mask, truth) - 0.02, name
        int8_scores.append(dice(int8, truth))
    assert np.mean(int8_scores) > 0.8  # and it finds the polyps


def test_class_argmax_matches_torch_argmax() -> None:
    from medlens.infer.segmentation import class_argmax

    probabilities = torch.rand(4, 7, 9, 5)
    assert torch.equal(class_argmax(probabilities), probabilities.argmax(0).to(torch.uint8))


def test_int8_quantisation_keeps_the_end_convolutions_float_and_the_output_close(
    tmp_path: Path,
) -> None:
    """Static int8 (QDQ): middle convolutions quantised, stem and head float, same answer."""
    import onnx

    from medlens.compress.quantize import conv_node_names, quantize_onnx

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()]
    for _ in range(4):
        layers += [torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()]
    network = torch.nn.Sequential(*layers, torch.nn.Conv2d(16, 2, 1)).eval()
    source = export_onnx(network, torch.rand(1, 3, 32, 32), tmp_path / "float.onnx")
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(8)]
    output = quantize_onnx(source, tmp_path / "int8.onnx", calibration, float_first=1, float_last=1)

    graph = onnx.load(str(output)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert [node.name for node in convs] == conv_node_names(source)
    quantised = [produced_by.get(node.input[1]) is not None for node in convs]
    assert quantised == [False, True, True, True, True, False]  # weights via DequantizeLinear

    x = torch.from_numpy(rng.random((2, 3, 48, 40), dtype=np.float32))  # other batch and size
    expected = OnnxNetwork(source, threads=1)(x)
    got = OnnxNetwork(output, threads=1)(x)
    assert got.shape == expected.shape
    assert float(torch.corrcoef(torch.stack([got.ravel(), expected.ravel()]))[0, 1]) > 0.99
    assert list(tmp_path.glob("*.partial*")) == []  # written atomically

    with pytest.raises(MedlensError, match="calibration"):
        quantize_onnx(source, tmp_path / "none.onnx", [])
    assert not (tmp_path / "none.onnx").exists()
