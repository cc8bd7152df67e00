"""Differentially private training through Opacus (DP-SGD).

:func:`make_private` turns a model, optimizer and data loader into their DP-SGD versions:
per-sample gradients clipped to ``max_grad_norm``, Gaussian noise calibrated so that
``epochs`` passes over the data spend at most (``epsilon``, ``delta``), Poisson sampling of
batches. BatchNorm mixes samples of a batch (its per-sample gradients are not defined), so
normalisation layers Opacus rejects are replaced first (``ModuleValidator.fix``: BatchNorm and
InstanceNorm with running stats -> GroupNorm).

Example (training loop unchanged apart from the wrapped objects)::

    dp = make_private(model, optimizer, loader, epsilon=8.0, delta=1e-5, epochs=10)
    for epoch in range(10):
        for images, masks in dp.data_loader:
            dp.optimizer.zero_grad()
            loss_fn(dp.model(images), masks).backward()
            dp.optimizer.step()
        print(epoch, dp.epsilon_spent())
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from medlens.errors import MedlensError


@dataclasses.dataclass
class DPTraining:
    """The DP-SGD versions of model, optimizer and loader, plus the privacy accountant.

    Train with ``model``, ``optimizer`` and ``data_loader`` from here (not the originals);
    ``epsilon_spent()`` is the epsilon (at ``delta``) of the steps taken so far.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: torch.utils.data.DataLoader
    privacy_engine: Any
    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    #: True when BatchNorm/InstanceNorm-with-running-stats layers were replaced by GroupNorm:
    #: the saved architecture then differs from the one the model card would rebuild.
    normalization_replaced: bool = False

    @property
    def plain_model(self) -> torch.nn.Module:
        """The trained network without Opacus' per-sample-gradient wrapper (to save/export)."""
        return getattr(self.model, "_module", self.model)

    def epsilon_spent(self) -> float:
        """Epsilon spent so far at the target delta (RDP accountant)."""
        return float(self.privacy_engine.get_epsilon(self.delta))

    def summary(self) -> dict[str, float]:
        """Numbers for logs and the model card."""
        return {
            "dp_epsilon_target": self.epsilon,
            "dp_delta": self.delta,
            "dp_epsilon_spent": self.epsilon_spent(),
            "dp_max_grad_norm": self.max_grad_norm,
            "dp_noise_multiplier": self.noise_multiplier,
        }


def _transposed_conv_grad_sample(
    layer: torch.nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a transposed convolution (Opacus ships no sampler for it).

    A transposed convolution is the adjoint of a convolution with the same weight, so its
    weight gradient for one sample is the convolution weight gradient with input and output
    swapped. When the kernel equals the stride (the up-sampling layer of MONAI's DynUNet)
    every output voxel gets exactly one input voxel and the whole batch is one einsum:
    ``y[o, s*i + a] = sum_c x[c, i] * W[c, o, a] + b[o]``.
    """
    inputs = activations[0].to(backprops.dtype)
    dims = inputs.dim() - 2
    if not 1 <= dims <= 3:
        raise MedlensError("DP-SGD transposed convolutions support 1D to 3D")
    kernel, stride = tuple(layer.kernel_size), tuple(layer.stride)
    simple = (
        kernel == stride
        and not any(layer.padding)
        and not any(layer.output_padding)
        and layer.groups == 1
        and all(d == 1 for d in layer.dilation)
    )
    if simple:
        batch, out_channels = backprops.shape[:2]
        split_shape = [batch, out_channels]  # (B, O, D*s, ...) -> (B, O, D, s, ...)
        for size, step in zip(inputs.shape[2:], stride, strict=True):
            split_shape += [size, step]
        letters, kernel_letters = "dhw"[:dims], "xyz"[:dims]
        grad_spec = "bo" + "".join(a + k for a, k in zip(letters, kernel_letters, strict=True))
        weight_grad = torch.einsum(
            f"bc{letters},{grad_spec}->bco{kernel_letters}", inputs, backprops.reshape(split_shape)
        )
    else:
        if layer.groups != 1:
            raise MedlensError("DP-SGD does not support grouped transposed convolutions")
        conv_weight_grad = (
            torch.nn.grad.conv1d_weight,
            torch.nn.grad.conv2d_weight,
            torch.nn.grad.conv3d_weight,
        )[dims - 1]
        weight_grad = torch.stack(
            [
                conv_weight_grad(
                    grad[None],
                    tuple(layer.weight.shape),
                    sample[None],
                    stride=layer.stride,
                    padding=layer.padding,
                    dilation=layer.dilation,
                )
                for sample, grad in zip(inputs, backprops, strict=True)
            ]
        )
    result = {layer.weight: weight_grad}
    if layer.bias is not None and layer.bias.requires_grad:
        result[layer.bias] = backprops.sum(dim=tuple(range(2, backprops.dim())))
    return result


def _register_transposed_conv_samplers() -> None:
    from opacus.grad_sample import GradSampleModule

    for layer_type in (
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.ConvTranspose3d,
    ):
        GradSampleModule.GRAD_SAMPLERS.setdefault(layer_type, _transposed_conv_grad_sample)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    data_loader: torch.utils.data.DataLoader,
    *,
    epsilon: float,
    delta: float,
    epochs: int,
    max_grad_norm: float = 1.0,
    learning_rate: float | None = None,
) -> DPTraining:
    """Wrap a training setup for DP-SGD with a total budget (``epsilon``, ``delta``).

    ``model`` may contain BatchNorm/InstanceNorm: they are replaced by GroupNorm, which
    creates new parameters, so pass ``optimizer=None`` (and ``learning_rate``) to get an Adam
    optimizer over the fixed model, or build your optimizer after calling
    ``opacus.validators.ModuleValidator.fix`` yourself. When norm layers are replaced, an
    optimizer you pass is rebuilt (same class and settings) over the new parameters: create
    learning-rate schedulers afterwards, on ``result.optimizer``. ``delta`` should be below
    1 / number of training samples.
    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    if not epsilon > 0 or not 0 < delta < 1 or epochs < 1 or max_grad_norm <= 0:
        raise MedlensError(
            f"invalid DP settings (epsilon={epsilon}, delta={delta}, epochs={epochs}, "
            f"max_grad_norm={max_grad_norm})",
            hint="need epsilon > 0, 0 < delta < 1, epochs >= 1, max_grad_norm > 0",
        )
    _register_transposed_conv_samplers()
    errors = ModuleValidator.validate(model, strict=False)
    replaced = bool(errors)
    if errors:
        fixed = ModuleValidator.fix(model)
        if optimizer is not None and _optimizer_misses_parameters(optimizer, fixed):
            # the optimizer holds the old norm layers' parameters: rebuild it over the new ones
            optimizer = _rebuild_optimizer(optimizer, fixed)
        model = fixed
    remaining = ModuleValidator.validate(model, strict=False)
    if remaining:
        raise MedlensError(f"model cannot be trained with DP-SGD: {remaining[0]}")
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate or 1e-3)
    with warnings.catch_warnings():
        # Opacus warns about secure RNG (not needed for research) and full backward hooks
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        engine = PrivacyEngine(accountant="rdp")
        private_model, private_optimizer, private_loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            target_epsilon=epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
        )
    return DPTraining(
        model=private_model,
        optimizer=private_optimizer,
        data_loader=private_loader,
        privacy_engine=engine,
        epsilon=epsilon,
        delta=delta,
        max_grad_norm=max_grad_norm,
        noise_multiplier=float(private_optimizer.noise_multiplier),
        normalization_replaced=replaced,
    )


def _rebuild_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module
) -> torch.optim.Optimizer:
    """Same optimizer class and settings over ``model``'s (new) parameters."""
    import inspect

    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(model.parameters(), **settings)


def _optimizer_misses_parameters(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> bool:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return any(id(p) not in held for p in model.parameters() if p.requires_grad)
