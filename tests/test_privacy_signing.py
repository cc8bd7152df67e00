"""Trusted models: Ed25519 signatures over card + weights; load_model(public_key=...)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from medlens.cli import main
from medlens.errors import MedlensError
from medlens.models.zoo import ModelCard, load_model, save_model


def run(*args: str | Path) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as error:
        return int(error.code or 0)
    return 0


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    params = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [4, 8, 16],
    }
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    card = ModelCard(
        name="tiny",
        task="segmentation",
        architecture={"name": "DynUNet", "params": params},
        labels={0: "bg", 1: "fg"},
    )
    save_model(DynUNet(**params), tmp_path / "tiny", card)
    return tmp_path / "tiny"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "team.key", tmp_path / "team.pub"
    assert run("keygen", private, public) == 0
    assert private.stat().st_mode & 0o077 == 0  # private key readable by the owner only
    return private, public


def test_keygen_never_replaces_a_key_and_writes_neither_file_when_refused(
    keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    before = private.read_bytes(), public.read_bytes()
    assert run("keygen", private, tmp_path / "new.pub") == 2
    assert "keys are never overwritten" in capsys.readouterr().err
    assert run("keygen", tmp_path / "new.key", public) == 2  # the private key is not written
    assert not (tmp_path / "new.key").exists() and not (tmp_path / "new.pub").exists()
    assert (private.read_bytes(), public.read_bytes()) == before


def test_signed_model_verifies_and_loads_with_the_team_key(model_folder: Path, keys) -> None:
    private, public = keys
    assert run("sign", model_folder, "--key", private) == 0
    assert (model_folder / "model.sig").is_file()
    assert run("verify", model_folder, "--public-key", public) == 0
    network, card = load_model(model_folder, public_key=public)
    assert card.name == "tiny" and not network.training


def test_unsigned_changed_or_foreign_models_are_refused(
    model_folder: Path, keys, tmp_path: Path
) -> None:
    private, public = keys
    with pytest.raises(MedlensError, match="not signed"):
        load_model(model_folder, public_key=public)
    load_model(model_folder)  # without a trusted key, the sha256 check alone applies
    assert run("sign", model_folder, "--key", private) == 0

    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    assert run("keygen", other_private, other_public) == 0
    assert run("verify", model_folder, "--public-key", other_public) == 2
    with pytest.raises(MedlensError, match="signature does not verify"):
        load_model(model_folder, public_key=other_public)

    # a changed card (e.g. inflated metrics) breaks the signature even with valid weights
    card_path = model_folder / "model.json"
    original = card_path.read_text()
    card = json.loads(original)
    card["metrics"] = {"dice": 0.99}
    card_path.write_text(json.dumps(card))
    assert run("verify", model_folder, "--public-key", public) == 2
    card_path.write_text(original)
    assert run("verify", model_folder, "--public-key", public) == 0

    # changed weights: refused by the signature and by the card's sha256
    weights = model_folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MedlensError, match="signature does not verify"):
        load_model(model_folder, public_key=public)
    with pytest.raises(MedlensError, match="sha256"):
        load_model(model_folder)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_made_keys_work(model_folder: Path, tmp_path: Path) -> None:
    private, public = tmp_path / "ossl.key", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", private], check=True)
    subprocess.run(["openssl", "pkey", "-in", private, "-pubout", "-out", public], check=True)
    assert run("sign", model_folder, "--key", private) == 0
    assert run("verify", model_folder, "--public-key", public) == 0


def test_wrong_key_types_are_clear_errors(model_folder: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a key")
    assert run("sign", model_folder, "--key", bogus) == 2
    assert run("sign", model_folder, "--key", tmp_path / "missing.key") == 2
    assert not (model_folder / "model.sig").exists()
