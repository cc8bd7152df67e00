"""ONNX export of a network and an ONNX Runtime engine that stands in for it on the CPU.

On CPUs without AVX512 (e.g. AMD EPYC Milan, AVX2) ONNX Runtime runs our EfficientNet-Lite
networks ~1.7x faster than PyTorch eager with channels-last tensors (depthwise convolutions and
BatchNorm, which ORT folds into the convolutions); ``benchmarks/`` measures it. The exported
graph is checked against the PyTorch outputs before it is used.

Exports are cached under ``~/.cache/medlens/onnx`` keyed by the weights' sha256, the input
layout and the torch/onnx versions, so a model is exported once per machine (a few seconds).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output

OPSET = 17
DEFAULT_CACHE = Path.home() / ".cache" / "medlens" / "onnx"


def onnx_runtime_available() -> bool:
    """True when ``onnxruntime`` (and ``onnx``) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Outputs(torch.nn.Module):
    """Wraps a network whose forward returns a dict so the exporter sees a tuple."""

    def __init__(self, network: torch.nn.Module, names: Sequence[str] | None) -> None:
        super().__init__()
        self.network = network
        self.names = list(names) if names else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.network(x)
        return tuple(out[name] for name in self.names) if self.names else out


def export_onnx(
    network: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    atol: float = 1e-3,
    threads: int | None = None,
) -> Path:
    """Write ``network`` (eval mode) as ONNX with dynamic batch and spatial axes.

    ``example``: an input ``(N, C, *spatial)`` used to trace and then to check that ONNX
    Runtime reproduces the PyTorch outputs within ``atol``; the file appears only if it does.
    Dict outputs keep their keys as the graph's output names.

    Example:
        >>> import tempfile
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2))
        >>> path = export_onnx(net, torch.rand(1, 1, 16, 16), Path(tempfile.mkdtemp()) / "n.onnx")
        >>> path.suffix
        '.onnx'
    """
    path = Path(path)
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        reference = network(example)
    names = list(reference) if isinstance(reference, dict) else None
    output_names = names or ["output"]
    spatial = {i: f"d{i}" for i in range(2, example.ndim)}
    dynamic_axes = {"input": {0: "batch", **spatial}}
    dynamic_axes |= {name: {0: "batch", **spatial} for name in output_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path) as temporary, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
            torch.onnx.export(
                _Outputs(network, names).eval(),
                (example.contiguous(),),
                str(temporary),
                input_names=["input"],
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,
            )
            engine = OnnxNetwork(temporary, threads=threads)
            got = engine(example)
            pairs = [(got[n], reference[n]) for n in names] if names else [(got, reference)]
            error = max(float((a - b.float()).abs().max()) for a, b in pairs)
            if error > atol:
                raise MedlensError(
                    f"ONNX export of {type(network).__name__} differs from PyTorch by {error:.2g}"
                    f" (> {atol:g})",
                    hint="run with --engine torch",
                )
    finally:
        network.train(was_training)
    return path


class OnnxNetwork(torch.nn.Module):
    """An exported network run by ONNX Runtime on the CPU, called like the PyTorch module.

    Takes a float tensor ``(N, C, *spatial)`` (any memory format) and returns a tensor, or a
    dict of tensors when the graph has named outputs. Holds no parameters: ``.to()`` and
    ``.eval()`` are no-ops, so it can replace the network in the predictors.
    """

    def __init__(
        self, path: str | Path, *, threads: int | None = None, memory_arena: bool = True
    ) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # the arena keeps the largest activations seen (a batch of 3D windows: ~0.2 GiB more
        # peak on a 512x512x400 volume) for speed; the 3D networks measured no faster with it,
        # the 2D detector 25% faster
        options.enable_cpu_mem_arena = memory_arena
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle ORT threads must not spin: they would steal the 2 cores from the pre- and
        # post-processing (letterbox, decode, NMS) that runs between calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        outputs = self.session.run(None, {"input": array})
        if self.output_names == ["output"]:
            return torch.from_numpy(outputs[0])
        return {
            name: torch.from_numpy(o) for name, o in zip(self.output_names, outputs, strict=True)
        }


def cached_onnx_network(
    network: torch.nn.Module,
    example: torch.Tensor,
    *,
    weights_sha256: str,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    memory_arena: bool = True,
) -> OnnxNetwork:
    """:class:`OnnxNetwork` of ``network``, exported on first use and cached on disk.

    The cache key holds the weights' sha256 (from the model card), the input's channels and
    dimensionality, and the torch/onnx/onnxruntime versions, so a changed model or library
    never reuses a stale graph.
    """
    import onnx
    import onnxruntime

    key = "|".join(
        [
            weights_sha256,
            f"c{example.shape[1]}d{example.ndim - 2}",
            torch.__version__,
            onnx.__version__,
            onnxruntime.__version__,
            f"opset{OPSET}",
        ]
    )
    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".onnx")
    if not path.is_file():
        export_onnx(network, example, path, threads=threads)
    return OnnxNetwork(path, threads=threads, memory_arena=memory_arena)


ENGINES = ("auto", "torch", "onnx")


def inference_engine(
    network: torch.nn.Module,
    example: torch.Tensor,
    *,
    engine: str = "auto",
    device: str = "cpu",
    weights_sha256: str,
    cache_dir: str | Path | None = None,
    memory_arena: bool = True,
) -> torch.nn.Module:
    """The module that runs inference: ``network`` itself or its ONNX Runtime engine.

    ``engine``: ``"torch"``; ``"onnx"`` (CPU only; an error if it cannot be used); ``"auto"``:
    ONNX Runtime on the CPU when it is installed and the export checks out, else PyTorch.
    """
    if engine not in ENGINES:
        raise MedlensError(f"unknown engine '{engine}'", hint="use auto, torch or onnx")
    if engine == "torch" or (engine == "auto" and str(device) != "cpu"):
        return network
    if str(device) != "cpu":
        raise MedlensError(
            "--engine onnx runs on the CPU", hint="use --device cpu or --engine torch"
        )
    if not onnx_runtime_available():
        if engine == "onnx":
            raise MedlensError(
                "--engine onnx needs onnxruntime and onnx", hint="pip install onnxruntime onnx"
            )
        return network
    try:
        return cached_onnx_network(
            network,
            example,
            weights_sha256=weights_sha256,
            cache_dir=cache_dir,
            memory_arena=memory_arena,
        )
    except (MedlensError, OSError, RuntimeError):
        if engine == "onnx":
            raise
        return network  # auto: a model the exporter cannot take still runs in PyTorch
