"""Deep supervision (``train seg --deep-supervision``): extra heads on the decoder's coarser
stages train beside the network, as nnU-Net's do, and the shipped model leaves them out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from monai.losses import DiceCELoss

from medlens.models.segmentation import SegmentationPlan
from medlens.train.deep_supervision import DeepSupervision, DeepSupervisionLoss
from medlens.train.segmentation_config import TrainConfig


def train(data: Path, out: Path, *extra: str) -> int:
    return run_cli(
        ["train", "seg", str(data), "--out", str(out), "--threads", "1", "--val-every", "2",
         "--checkpoint-minutes", "0", "--batch-size", "2", *extra]
    )  # fmt: skip


def test_the_heads_train_and_resume_with_the_run_but_the_model_is_the_plain_network(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["--labels", "1=polyp", "--no-pretrained", "--deep-supervision"]
    assert train(examples / "kvasir", run, "--iterations", "2", *args) == 0
    heads = torch.load(run / "checkpoint.pt", weights_only=False)["deep_supervision"]
    assert len(heads) == 4  # two 1x1 heads (weight, bias) on the Lite U-Net's stride 4 and 8

    from safetensors.torch import load_file

    plan = SegmentationPlan.from_dict(json.loads((run / "plan.json").read_text()))
    shipped = load_file(str(run / "model" / "model.safetensors"))
    assert set(shipped) == set(plan.build_network().state_dict())
    card = json.loads((run / "model" / "model.json").read_text())
    assert "deep supervision" in card["training"]["loss"]
    assert "--deep-supervision" in card["training"]["command"]

    without = ["--labels", "1=polyp", "--no-pretrained", "--no-deep-supervision"]
    capsys.readouterr()
    assert train(examples / "kvasir", run, "--iterations", "3", *without, "--resume") == 2
    assert "the checkpoint was trained with --deep-supervision" in capsys.readouterr().err
    assert train(examples / "kvasir", run, "--iterations", "3", *args, "--resume") == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    # without the flag, --resume follows the checkpoint
    assert train(examples / "kvasir", run, "--iterations", "4", *without[:-1], "--resume") == 0
    assert "deep_supervision" in torch.load(run / "checkpoint.pt", weights_only=False)


def test_a_dynunet_gets_heads_on_its_inner_decoder_stages_and_all_of_them_learn() -> None:
    plan = SegmentationPlan(
        dims=3, in_channels=1, labels={0: "background", 1: "a", 2: "b"}, patch_size=[32, 32, 16],
        batch_size=2, spacing_mm=[1.0, 1.0, 1.0], normalisation={}, filters=[8, 16, 32, 64],
        kernel_size=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]],
    )  # fmt: skip
    network = plan.build_network()
    supervised = DeepSupervision(network, out_channels=3, patch_size=plan.patch_size, in_channels=1)
    outputs = supervised(torch.randn(2, 1, 32, 32, 16))
    # the network's output, then stride 2 (the coarsest stage, at stride 4, is left out)
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 16), (16, 16, 8)]
    assert supervised.weights == pytest.approx([2 / 3, 1 / 3])

    labels = torch.randint(0, 3, (2, 1, 32, 32, 16))
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), supervised.weights)
    loss(outputs, labels).backward()
    for part in (network.upsamples[1], network.output_block, *supervised.heads):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_the_loss_weighs_each_output_against_labels_downsampled_by_nearest_neighbour() -> None:
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    labels[..., 2:6, 2:6] = 1
    coarse_labels = labels[..., ::2, ::2]  # nearest neighbour to 4x4

    def logits(target: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(target[:, 0], 2).movedim(-1, 1).float()
        return onehot * 20 - 10  # confident where the labels are

    plain = DiceCELoss(to_onehot_y=True, softmax=True)
    wrong_coarse = 1 - logits(coarse_labels)
    combined = DeepSupervisionLoss(plain, [0.75, 0.25])
    right = combined([logits(labels), logits(coarse_labels)], labels)
    wrong = combined([logits(labels), wrong_coarse], labels)
    assert float(right) < 0.01
    expected = 0.75 * plain(logits(labels), labels) + 0.25 * plain(wrong_coarse, coarse_labels)
    assert float(wrong) == pytest.approx(float(expected))


def test_deep_supervision_is_refused_with_differential_privacy() -> None:
    from medlens.errors import MedlensError

    config = TrainConfig(data=Path("x"), out=Path("y"), deep_supervision=True, dp_epsilon=8.0)
    with pytest.raises(MedlensError, match="--deep-supervision cannot be combined"):
        config.check()


def test_a_3d_dynunet_trains_with_deep_supervision_unless_told_not_to(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--labels", "1=anterior,2=posterior", "--val-cases", "hippocampus_001"]
    by_default, without = tmp_path / "default", tmp_path / "without"
    assert train(examples / "hippocampus", by_default, "--iterations", "1", *args) == 0
    assert "deep_supervision" in torch.load(by_default / "checkpoint.pt", weights_only=False)
    card = json.loads((by_default / "model" / "model.json").read_text())
    assert "deep supervision" in card["training"]["loss"]
    assert "deep-supervision" not in card["training"]["command"]  # the default reproduces it

    flag = "--no-deep-supervision"
    assert train(examples / "hippocampus", without, "--iterations", "1", *args, flag) == 0
    assert "deep_supervision" not in torch.load(without / "checkpoint.pt", weights_only=False)
    card = json.loads((without / "model" / "model.json").read_text())
    assert "deep supervision" not in card["training"]["loss"]
    assert flag in card["training"]["command"]

    # a resumed run follows its checkpoint (runs from before the default had no heads)
    assert train(examples / "hippocampus", without, "--iterations", "2", *args, "--resume") == 0
    assert "deep_supervision" not in torch.load(without / "checkpoint.pt", weights_only=False)
    capsys.readouterr()
    assert train(examples / "hippocampus", without, "--iterations", "3", "--resume",
                 "--deep-supervision", *args) == 2  # fmt: skip
    assert "the checkpoint was trained without --deep-supervision" in capsys.readouterr().err


def test_the_default_leaves_deep_supervision_off_for_2d_plans_and_dp_sgd() -> None:
    from medlens.train.segmentation_setup import uses_deep_supervision

    def plan(dims: int, network: str) -> SegmentationPlan:
        return SegmentationPlan(
            dims=dims, in_channels=1, labels={0: "background", 1: "a"}, patch_size=[32] * dims,
            batch_size=2, spacing_mm=[1.0] * dims, normalisation={}, network=network,
            filters=[8, 16], kernel_size=[[3] * dims] * 2, strides=[[1] * dims, [2] * dims],
        )  # fmt: skip

    config = TrainConfig(data=Path("x"), out=Path("y"))
    assert uses_deep_supervision(config, plan(3, "DynUNet"), None)
    assert not uses_deep_supervision(config, plan(2, "DynUNet"), None)
    assert not uses_deep_supervision(config, plan(2, "Lite0UNet"), None)
    private = TrainConfig(data=Path("x"), out=Path("y"), dp_epsilon=8.0)
    assert not uses_deep_supervision(private, plan(3, "DynUNet"), None)
    explicit = TrainConfig(data=Path("x"), out=Path("y"), deep_supervision=True)
    assert uses_deep_supervision(explicit, plan(2, "Lite0UNet"), None)
    assert uses_deep_supervision(config, plan(2, "Lite0UNet"), {"deep_supervision": {}})
