"""The ``medlens`` Typer app, its ``train`` group, and what the commands share (consoles,
options, argument parsers).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from medlens.errors import MedlensError

app = typer.Typer(
    name="medlens",
    help="Medical-imaging AI from raw scans to results: read, convert, preprocess, segment, "
    "detect, evaluate, de-identify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

stdout = Console()
stderr = Console(stderr=True)

train_app = typer.Typer(
    help="Train a model: `medlens train seg DATA --out RUN`, `medlens train detect DATA`.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

SeriesOption = Annotated[
    str | None, typer.Option("--series", help="SeriesInstanceUID to pick from a DICOM folder.")
]
EngineOption = Annotated[
    str,
    typer.Option(
        help="auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or onnx."
    ),
]
SegmentationEngineOption = Annotated[
    str,
    typer.Option(
        help="auto (on the CPU: the model's int8 graph if it has one, else ONNX Runtime when "
        "installed, else PyTorch), torch, onnx or onnx-int8."
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        from medlens import __version__

        stdout.print(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """medlens: medical-imaging AI from raw scans to trusted, fast results."""


def _format_vector(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """``"1=anterior,2=posterior"`` -> ``{1: "anterior", 2: "posterior"}``."""
    if not text:
        return None
    names: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise MedlensError(f"bad label name '{item}'", hint="use --labels '1=liver,2=tumour'")
        names[int(value)] = name.strip()
    return names


def _int_list(text: str | None, option: str, example: str = "40x56x40") -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise MedlensError(f"{option} takes integers like {example}, got '{text}'")
    return values
