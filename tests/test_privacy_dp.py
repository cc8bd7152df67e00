"""Differential privacy: a real short DP-SGD run of a MONAI 2D UNet on Kvasir frames."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.privacy.dp import make_private


def kvasir_loader(
    shared_data: Path, count: int = 12, size: int = 64
) -> torch.utils.data.DataLoader:
    images = sorted((shared_data / "kvasir-seg" / "images").glob("*.jpg"))[:count]
    if not images:
        pytest.skip("kvasir-seg missing")
    frames, masks = [], []
    for path in images:
        frame = cv2.resize(cv2.imread(str(path))[:, :, ::-1], (size, size)).astype(np.float32)
        mask = cv2.resize(
            cv2.imread(str(path.parent.parent / "masks" / path.name), 0), (size, size)
        )
        frames.append(frame.transpose(2, 0, 1) / 255.0)
        masks.append((mask > 127)[None].astype(np.float32))
    data = torch.utils.data.TensorDataset(
        torch.tensor(np.array(frames)), torch.tensor(np.array(masks))
    )
    return torch.utils.data.DataLoader(data, batch_size=4)


def test_dp_training_reports_finite_epsilon_within_budget(shared_data: Path) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
        norm="batch",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = kvasir_loader(shared_data)
    epochs = 2
    dp = make_private(model, optimizer, loader, epsilon=4.0, delta=1e-3, epochs=epochs)
    # BatchNorm mixes samples: it must be gone, GroupNorm in its place
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in dp.model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in dp.model.modules())
    assert dp.noise_multiplier > 0
    loss_fn = torch.nn.BCEWithLogitsLoss()
    spent = []
    before = [p.detach().clone() for p in dp.model.parameters()]
    for _ in range(epochs):
        for frames, masks in dp.data_loader:
            if len(frames) == 0:  # Poisson sampling can draw an empty batch
                continue
            dp.optimizer.zero_grad()
            loss_fn(dp.model(frames), masks).backward()
            dp.optimizer.step()
        spent.append(dp.epsilon_spent())
    assert all(math.isfinite(e) and e > 0 for e in spent)
    assert spent[0] < spent[1] <= 4.0 + 1e-6
    assert any(
        not torch.equal(a, b.detach()) for a, b in zip(before, dp.model.parameters(), strict=True)
    )
    assert dp.normalization_replaced
    assert not hasattr(dp.plain_model, "_module") and isinstance(dp.plain_model, UNet)
    summary = dp.summary()
    assert summary["dp_epsilon_spent"] == spent[-1] and summary["dp_delta"] == 1e-3


def test_invalid_budget_is_a_user_error(shared_data: Path) -> None:
    model = torch.nn.Conv2d(3, 1, 3)
    with pytest.raises(MedlensError, match="invalid DP settings"):
        make_private(
            model, None, kvasir_loader(shared_data, count=4), epsilon=0.0, delta=1e-5, epochs=1
        )


def test_optimizer_is_rebuilt_with_its_settings_when_norm_layers_are_replaced(
    shared_data: Path,
) -> None:
    from monai.networks.nets import UNet

    model = UNet(
        spatial_dims=2, in_channels=3, out_channels=1, channels=(4, 8), strides=(2,), norm="batch"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    dp = make_private(
        model,
        optimizer,
        kvasir_loader(shared_data, count=4, size=32),
        epsilon=2.0,
        delta=1e-3,
        epochs=1,
    )
    rebuilt = dp.optimizer.original_optimizer
    assert isinstance(rebuilt, torch.optim.AdamW)
    assert rebuilt.defaults["lr"] == 2e-3 and rebuilt.defaults["weight_decay"] == 0.05
    held = {id(p) for group in rebuilt.param_groups for p in group["params"]}
    assert all(id(p) in held for p in dp.model.parameters())
