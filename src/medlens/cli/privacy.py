"""``medlens deid``, ``sign``, ``verify`` and ``keygen``: de-identification and signed models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.app import (
    app,
    stderr,
    stdout,
)


# --------------------------------------------------------------------------- deid / sign / verify
@app.command()
def deid(
    source: Annotated[Path, typer.Argument(help="DICOM file or folder tree (NIfTI/NRRD too).")],
    output: Annotated[Path, typer.Argument(help="Output folder (outside the input).")],
    key_file: Annotated[
        Path, typer.Option("--key-file", help="Secret key (>= 32 bytes) for keyed pseudonyms.")
    ],
    profile: Annotated[
        str,
        typer.Option(
            help="PS3.15 Annex E profile: basic, research (= dates+descriptors), longitudinal, "
            "or options joined by '+': dates, patient, device, descriptors."
        ),
    ] = "research",
    workers: Annotated[
        int, typer.Option(help="Parallel processes (0 = one per CPU core).", min=0)
    ] = 1,
) -> None:
    """De-identify DICOM (PS3.15 Annex E + options), NIfTI and NRRD files with a secret key.

    Same key, same pseudonyms, UIDs and date shifts in every run. Writes
    OUT/<study>/<series>/<instance>.dcm and the audit log OUT/deid_audit.jsonl. Exit code 1
    when a file was corrupt or had burned-in text that could not be blanked (listed).
    Create a key with `head -c 64 /dev/urandom > deid.key`.
    """
    import os

    from rich.progress import Progress

    from medlens.privacy.deid import deidentify

    with Progress(console=stderr, transient=True) as bar:
        task = bar.add_task("de-identifying", total=None)
        report = deidentify(
            source,
            output,
            key_file=key_file,
            profile=profile,
            workers=workers or (os.cpu_count() or 1),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    stdout.print(f"wrote {len(report.written)} files to {output}  (audit: {report.audit_log})")
    for name in report.non_dicom:
        stderr.print(f"[yellow]not DICOM, not copied:[/] {name}", highlight=False)
    for name, reason in report.corrupt:
        stderr.print(f"[red]corrupt, skipped:[/] {name} ({reason})", highlight=False)
    for name, reason in report.refused:
        stderr.print(f"[red]refused (burned-in text):[/] {name} ({reason})", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def sign(
    model: Annotated[str, typer.Argument(help="Model name or folder (model.json + weights).")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
) -> None:
    """Sign a model's card and weights with an Ed25519 key: writes MODEL/model.sig."""
    from medlens.models.zoo import find_model
    from medlens.privacy.signing import sign_model

    path = sign_model(find_model(model), key)
    stdout.print(f"signed: {path}")


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="Model name or folder.")],
    public_key: Annotated[Path, typer.Option("--public-key", help="Ed25519 public key (PEM).")],
) -> None:
    """Check that a model is unchanged and signed by the holder of PUBLIC_KEY (exit 2 if not)."""
    from medlens.models.zoo import find_model, load_card
    from medlens.privacy.signing import verify_model

    folder = find_model(model)
    verify_model(folder, public_key)
    load_card(folder)  # the card must also parse
    stdout.print(f"verified: {folder} (signature and weights sha256 match)")


@app.command()
def keygen(
    private_key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
    public_key: Annotated[Path, typer.Argument(help="Where to write the public key (PEM).")],
) -> None:
    """Create an Ed25519 key pair for `medlens sign`.

    Equivalent: `openssl genpkey -algorithm ed25519 -out team.key` then
    `openssl pkey -in team.key -pubout -out team.pub`.
    """
    from medlens.privacy.signing import generate_keypair

    generate_keypair(private_key, public_key)
    stdout.print(f"wrote {private_key} (keep secret) and {public_key}")
