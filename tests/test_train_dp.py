"""Differentially private segmentation training: `medlens train seg --dp-epsilon`.

Opacus computes per-sample gradients; it has no sampler for transposed convolutions, so
medlens adds one for the U-Net up-sampling case (kernel == stride), checked here against
plain autograd one sample at a time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medlens.cli import main
from medlens.errors import MedlensError
from medlens.privacy.dp import _transposed_conv_grad_sample


@pytest.mark.parametrize(
    ("layer_type", "options"),
    [
        (torch.nn.ConvTranspose2d, {"kernel_size": 2, "stride": 2}),
        (torch.nn.ConvTranspose3d, {"kernel_size": 2, "stride": 2}),
        # MONAI UNet's up-sampling: overlapping kernel, padding and output padding
        (torch.nn.ConvTranspose2d, {"kernel_size": 3, "stride": 2, "padding": 1,
                                    "output_padding": 1}),
    ],
)  # fmt: skip
def test_transposed_conv_per_sample_gradients_equal_autograd(layer_type: type, options) -> None:
    from opacus.grad_sample import GradSampleModule

    from medlens.privacy.dp import _register_transposed_conv_samplers

    _register_transposed_conv_samplers()
    torch.manual_seed(0)
    layer = layer_type(3, 4, **options)
    dims = 2 if layer_type is torch.nn.ConvTranspose2d else 3
    inputs = torch.randn(4, 3, *([3] * dims))
    module = GradSampleModule(torch.nn.Sequential(layer), loss_reduction="sum")
    (module(inputs) ** 2).sum().backward()
    expected_weight, expected_bias = [], []
    for sample in inputs:
        copy = layer_type(3, 4, **options)
        copy.load_state_dict(layer.state_dict())
        (copy(sample[None]) ** 2).sum().backward()
        expected_weight.append(copy.weight.grad)
        expected_bias.append(copy.bias.grad)
    assert torch.allclose(layer.weight.grad_sample, torch.stack(expected_weight), atol=1e-4)
    assert torch.allclose(layer.bias.grad_sample, torch.stack(expected_bias), atol=1e-4)


def test_grouped_transposed_conv_is_refused() -> None:
    layer = torch.nn.ConvTranspose2d(2, 2, kernel_size=3, stride=2, groups=2)
    with pytest.raises(MedlensError, match="grouped"):
        _transposed_conv_grad_sample(layer, [torch.zeros(1, 2, 4, 4)], torch.zeros(1, 2, 9, 9))


def test_dp_training_reports_epsilon_in_log_and_model_card(tmp_path: Path, examples: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["train", "seg", str(examples / "hippocampus"), "--out", str(run),
             "--iterations", "4", "--val-every", "2", "--batch-size", "2", "--threads", "1",
             "--dp-epsilon", "8", "--dp-delta", "1e-3", "--labels", "1=anterior,2=posterior"]
        )  # fmt: skip
    assert exit_info.value.code in (0, None)
    rows = list(csv.DictReader((run / "log.csv").open()))
    spent = [float(row["dp_epsilon"]) for row in rows]
    assert spent and all(0 < value <= 8.0 + 1e-6 for value in spent)
    assert spent == sorted(spent)  # the budget only grows
    card = json.loads((run / "model" / "model.json").read_text())
    privacy = card["training"]["differential_privacy"]
    assert privacy["dp_epsilon_target"] == 8.0 and privacy["dp_delta"] == 1e-3
    assert 0 < privacy["dp_epsilon_spent"] <= 8.0 + 1e-6
    assert privacy["dp_noise_multiplier"] > 0


def test_dp_training_refuses_resume(tmp_path: Path, examples: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "seg", str(examples / "hippocampus"), "--out", str(run), "--iterations",
            "1", "--val-every", "1", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume", "--dp-epsilon", "4"])
    assert exit_info.value.code == 2
    assert "differential privacy cannot be combined with --resume" in capsys.readouterr().err
