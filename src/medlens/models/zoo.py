"""Model zoo: trained weights (safetensors) plus a model card (``model.json``), found by name.

A model lives in a folder ``NAME/`` holding ``model.safetensors`` and ``model.json``. Names
are looked up in ``models/`` of the medlens repository (or ``MEDLENS_MODELS``-style explicit
folders passed as ``search_paths``), or given as a folder path.

The card's ``architecture`` says how to rebuild the network: ``{"name": ..., "params": {...}}``
with ``name`` a key of :data:`ARCHITECTURES`. Loading verifies the sha256 of the weights
recorded in the card and refuses a changed file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024
#: ``models/`` beside ``src/`` in a source checkout.
REPO_MODELS = Path(__file__).resolve().parents[3] / "models"


def _dynunet(**params: Any) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(**params)


def _lite_unet(variant: int) -> Callable[..., torch.nn.Module]:
    def build(**params: Any) -> torch.nn.Module:
        from medlens.models.lite_unet import LiteUNet

        return LiteUNet(**params, variant=variant)

    return build


#: 2D segmentation networks on an EfficientNet-Lite encoder, by name -> variant.
LITE_UNETS = {"Lite0UNet": 0, "Lite1UNet": 1, "Lite2UNet": 2}

#: Architecture name -> builder(**params). Tasks add their own networks here.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "DynUNet": _dynunet,
    **{name: _lite_unet(variant) for name, variant in LITE_UNETS.items()},
}


def register_architecture(name: str, builder: Callable[..., torch.nn.Module]) -> None:
    """Make ``name`` buildable from a model card."""
    ARCHITECTURES[name] = builder


@dataclasses.dataclass
class ModelCard:
    """What a shipped model is, how it was trained and how well it did.

    ``task`` is e.g. ``"segmentation"`` or ``"detection"``; ``labels`` maps class values to
    names; ``preprocessing`` holds what inference must repeat (spacing, normalisation, patch
    size, ...); ``metrics`` the validation numbers; ``sha256`` the weights' digest.
    """

    name: str
    task: str
    architecture: dict[str, Any]
    labels: dict[int, str]
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str | Path = "model.json") -> ModelCard:
        try:
            data = json.loads(text)
            data["labels"] = {int(k): v for k, v in data.get("labels", {}).items()}
            known = {field.name for field in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise MedlensError(f"invalid model card ({error})", path=source) from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors as :func:`save_model` stores them (without the header).

    >>> weights_bytes(torch.nn.Linear(3, 2))  # 6 weights and 2 biases, float32
    32
    """
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_weights_size(
    size: int, *, what: str, path: str | Path | None = None, hint: str = ""
) -> None:
    """Refuse ``size`` bytes of weights over the 20 MB limit for shipped models."""
    if size > MAX_WEIGHTS_BYTES:
        raise MedlensError(
            f"{what} has {size / 2**20:.1f} MB of weights, over the 20 MB limit for shipped models",
            path=path,
            hint=hint,
        )


def build_network(card: ModelCard) -> torch.nn.Module:
    name = card.architecture.get("name", "")
    if name not in ARCHITECTURES:
        raise MedlensError(
            f"model card names unknown architecture '{name}'",
            hint="known: " + ", ".join(sorted(ARCHITECTURES)),
        )
    return ARCHITECTURES[name](**card.architecture.get("params", {}))


def save_model(model: torch.nn.Module, folder: str | Path, card: ModelCard) -> ModelCard:
    """Write weights and card (with the weights' sha256) atomically into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / WEIGHTS_NAME) as temporary:
        if any(not t.is_contiguous() for t in model.state_dict().values()):
            # channels-last training; safetensors stores row-major tensors only
            model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        # save_model de-duplicates tensors shared between modules (MONAI's DynUNet has some)
        save_safetensors(model, str(temporary))
        check_weights_size(temporary.stat().st_size, what="the model", path=folder)
    card = dataclasses.replace(card, sha256=file_sha256(folder / WEIGHTS_NAME))
    with atomic_output(folder / CARD_NAME) as temporary:
        temporary.write_text(card.to_json())
    return card


def find_model(name_or_path: str | Path, *, search_paths: Sequence[Path] = ()) -> Path:
    """The folder of a model given by name (``hippocampus``) or path."""
    candidate = Path(name_or_path)
    if (candidate / CARD_NAME).is_file():
        return candidate
    extra = [Path(p) for p in os.environ.get("MEDLENS_MODELS", "").split(os.pathsep) if p]
    for root in [*search_paths, *extra, REPO_MODELS]:
        if (root / str(name_or_path) / CARD_NAME).is_file():
            return root / str(name_or_path)
    available = sorted(p.parent.name for p in REPO_MODELS.glob(f"*/{CARD_NAME}"))
    raise MedlensError(
        f"no model named '{name_or_path}'",
        hint="available: " + (", ".join(available) or "none") + "; or pass a model folder",
    )


def load_card(name_or_path: str | Path) -> ModelCard:
    folder = find_model(name_or_path)
    return ModelCard.from_json((folder / CARD_NAME).read_text(), source=folder / CARD_NAME)


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
    public_key: str | Path | None = None,
) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the network from its card and load verified weights (eval mode).

    With ``public_key`` (an Ed25519 PEM file), the model must also carry a ``model.sig`` made
    with the matching private key over its current card and weights (``medlens sign``);
    unsigned or badly signed models are refused.
    """
    folder = find_model(name_or_path)
    if public_key is not None:
        from medlens.privacy.signing import verify_model

        verify_model(folder, public_key)
    card = ModelCard.from_json((folder / CARD_NAME).read_text(), source=folder / CARD_NAME)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise MedlensError("model folder has no model.safetensors", path=folder)
    if verify:
        actual = file_sha256(weights)
        if not card.sha256 or actual != card.sha256:
            raise MedlensError(
                f"weights sha256 {actual[:12]}... does not match the model card "
                f"({card.sha256[:12] or 'none'}...): the file was changed",
                path=weights,
                hint="restore the original weights or retrain with the command in model.json",
            )
    network = build_network(card)
    try:
        load_safetensors_into(network, str(weights), device=str(device))
    except RuntimeError as error:
        raise MedlensError(f"weights do not fit the architecture ({error})", path=weights) from None
    return network.to(device).eval(), card
