"""Transfer learning for segmentation networks: which parameters are the encoder, optimizer
groups with a lower encoder learning rate, and initialising from a shipped model (``--init``)."""

from __future__ import annotations

import torch

from medlens.errors import MedlensError
from medlens.train.segmentation_config import TrainConfig


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


def encoder_parameters(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Encoder of a DynUNet: input block, down-sampling blocks and bottleneck."""
    network = _unwrap(network)
    if hasattr(network, "encoder_parameters"):
        return list(network.encoder_parameters())
    parts = [network.input_block, *network.downsamples, network.bottleneck]
    return [p for part in parts for p in part.parameters()]


def parameter_groups(network: torch.nn.Module, encoder_lr_scale: float) -> list[dict]:
    """Optimizer groups: decoder and head first (the logged learning rate), then the encoder.

    Each group carries ``lr_scale``, its learning rate as a fraction of the schedule's.
    """
    if not encoder_lr_scale > 0:
        raise MedlensError(
            f"--encoder-lr-scale must be above 0, got {encoder_lr_scale}",
            hint="use --freeze-encoder-epochs to hold the encoder fixed",
        )
    if encoder_lr_scale == 1.0:
        return [{"params": list(network.parameters()), "lr_scale": 1.0}]
    encoder_ids = {id(parameter) for parameter in encoder_parameters(network)}
    rest = [p for p in network.parameters() if id(p) not in encoder_ids]
    encoder = [p for p in network.parameters() if id(p) in encoder_ids]
    return [
        {"params": rest, "lr_scale": 1.0},
        {"params": encoder, "lr_scale": encoder_lr_scale},
    ]


def initialise_from(network: torch.nn.Module, model: str) -> tuple[int, int]:
    """Copy every tensor of a shipped model whose name and shape match (transfer learning).

    Returns (copied, total) tensor counts; the rest (e.g. a head with other classes) keeps
    its fresh initialisation.
    """
    from safetensors.torch import load_file

    from medlens.models.zoo import WEIGHTS_NAME, find_model

    folder = find_model(model)
    source = load_file(str(folder / WEIGHTS_NAME))
    target = network.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    # DynUNet shares the output block with its deep-supervision heads under several names
    network.load_state_dict(copied, strict=False)
    if not copied:
        raise MedlensError(
            f"no layer of model '{model}' fits this network",
            hint="use a model with the same dimensionality and architecture",
        )
    return len(copied), len(target)


class EncoderFreeze:
    """``--freeze-early-blocks`` (the whole run) and ``--freeze-encoder-epochs`` (the first
    ``until`` iterations): which parameters get no gradient."""

    def __init__(
        self, network: torch.nn.Module, config: TrainConfig, *, until: int, start_step: int
    ) -> None:
        self.network = network
        self.until = until
        self.always_frozen: list[torch.nn.Parameter] = []
        if config.freeze_early_blocks:
            self.always_frozen = network.early_parameters(config.freeze_early_blocks)
            for parameter in self.always_frozen:
                parameter.requires_grad_(False)
        self.frozen = until > start_step
        if self.frozen:
            for parameter in encoder_parameters(network):
                parameter.requires_grad_(False)

    def update(self, step: int) -> None:
        """Thaw the encoder (less the early blocks) once ``step`` reaches ``until``."""
        if not self.frozen or step < self.until:
            return
        for parameter in encoder_parameters(self.network):
            parameter.requires_grad_(True)
        for parameter in self.always_frozen:
            parameter.requires_grad_(False)
        self.frozen = False
