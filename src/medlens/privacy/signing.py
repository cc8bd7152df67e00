"""Signed models: Ed25519 signatures over a model's card and weights (``cryptography``).

``model.sig`` (JSON) holds the signature over a fixed message: a version tag, the sha256 of
``model.json`` and the sha256 of ``model.safetensors``. Any change to the card (labels,
preprocessing, metrics) or the weights breaks it. Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), interchangeable with OpenSSL::

    openssl genpkey -algorithm ed25519 -out team.key
    openssl pkey -in team.key -pubout -out team.pub

or ``medlens keygen team.key team.pub``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output

SIGNATURE_NAME = "model.sig"
_MESSAGE_TAG = b"medlens-model-signature-v1\n"


def generate_keypair(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair (private key file readable by the owner only).

    Never replaces a key: both paths are checked before either is written, so a refused run
    leaves no private key without its public one.
    """
    if Path(private_path).resolve() == Path(public_path).resolve():
        raise MedlensError(
            "the private and the public key need two files",
            path=private_path,
            hint="e.g. team.key team.pub",
        )
    for path in (private_path, public_path):
        if Path(path).exists():
            raise MedlensError(
                "a file exists there; keys are never overwritten",
                path=path,
                hint="choose another name, or move the old key away yourself",
            )
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_output(private_path, overwrite=False, mode=0o600) as temporary:
        temporary.write_bytes(private_pem)
    with atomic_output(public_path, overwrite=False) as temporary:
        temporary.write_bytes(public_pem)


def _load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise MedlensError("private key not found", path=path) from None
    except (ValueError, TypeError) as error:
        raise MedlensError(f"not a PEM private key ({error})", path=path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MedlensError(
            "private key is not Ed25519",
            path=path,
            hint="openssl genpkey -algorithm ed25519 -out team.key",
        )
    return key


def _load_public(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise MedlensError("public key not found", path=path) from None
    except (ValueError, TypeError) as error:
        raise MedlensError(f"not a PEM public key ({error})", path=path) from None
    if not isinstance(key, Ed25519PublicKey):
        raise MedlensError("public key is not Ed25519", path=path)
    return key


def _message(folder: Path) -> bytes:
    from medlens.models.zoo import CARD_NAME, WEIGHTS_NAME, file_sha256

    for name in (CARD_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise MedlensError(f"model folder has no {name}", path=folder)
    return (
        _MESSAGE_TAG
        + file_sha256(folder / CARD_NAME).encode()
        + b"\n"
        + file_sha256(folder / WEIGHTS_NAME).encode()
        + b"\n"
    )


def sign_model(folder: str | Path, private_key: str | Path) -> Path:
    """Sign the model in ``folder``; writes ``folder/model.sig`` and returns its path."""
    folder = Path(folder)
    key = _load_private(private_key)
    signature = key.sign(_message(folder))
    public_raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record = {
        "algorithm": "Ed25519",
        "message": "medlens-model-signature-v1: sha256(model.json), sha256(model.safetensors)",
        "public_key": base64.b64encode(public_raw).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    with atomic_output(folder / SIGNATURE_NAME) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
    return folder / SIGNATURE_NAME


def verify_model(folder: str | Path, public_key: str | Path) -> None:
    """Raise :class:`MedlensError` unless ``folder`` is signed by ``public_key`` and unchanged."""
    folder = Path(folder)
    key = _load_public(public_key)
    signature_path = folder / SIGNATURE_NAME
    if not signature_path.is_file():
        raise MedlensError(
            "model is not signed (no model.sig)",
            path=folder,
            hint="sign it with `medlens sign MODEL --key team.key`",
        )
    try:
        signature = base64.b64decode(json.loads(signature_path.read_text())["signature"])
    except (ValueError, KeyError, TypeError):
        raise MedlensError("model.sig is damaged", path=signature_path) from None
    try:
        key.verify(signature, _message(folder))
    except InvalidSignature:
        raise MedlensError(
            "signature does not verify: the model was changed or signed by another key",
            path=folder,
            hint="use only models signed by your team's key",
        ) from None
