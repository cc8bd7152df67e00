"""The shipped models (``models/NAME``): each card's training commands still parse with
today's CLI, so anyone can retrain with them, and its weights are the ones it describes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer.main

from medlens.cli import app
from medlens.models.zoo import WEIGHTS_NAME, file_sha256

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(path.parent.name for path in MODELS.glob("*/model.json"))


def parse_command(command: str) -> dict[str, object]:
    """The parameters ``medlens ...`` would run with; a removed or renamed option, or a
    value the option no longer takes, raises as the shell would report it."""
    words = shlex.split(command)
    assert words[0] == "medlens", command
    target, arguments = typer.main.get_command(app), words[1:]
    while arguments and arguments[0] in getattr(target, "commands", {}):
        target, arguments = target.commands[arguments[0]], arguments[1:]
    return target.make_context(target.name, list(arguments)).params


def test_the_three_models_of_the_issues_are_shipped() -> None:
    assert {"hippocampus", "polyp", "kidney-stones"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_training_command_of_a_card_parses_with_the_current_cli(name: str) -> None:
    training = json.loads((MODELS / name / "model.json").read_text())["training"]
    assert training["command"].startswith("medlens train ")
    for command in [training["command"], *(training.get("resumed_with") or [])]:
        parse_command(command)


def test_the_hippocampus_card_records_the_deep_supervision_its_command_trains_with() -> None:
    """The command leaves 3D deep supervision at its default (on); the card says so."""
    card = json.loads((MODELS / "hippocampus" / "model.json").read_text())
    assert parse_command(card["training"]["command"])["deep_supervision"] in (None, True)
    assert "deep supervision" in card["training"]["loss"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_weights_are_the_cards_and_small_enough_to_ship(name: str) -> None:
    card = json.loads((MODELS / name / "model.json").read_text())
    weights = MODELS / name / WEIGHTS_NAME
    assert weights.stat().st_size <= 20 * 2**20
    assert file_sha256(weights) == card["sha256"]
    assert card["task"] in ("segmentation", "detection") and card["labels"]
    assert card["metrics"], "a shipped model states its validation metrics"


def test_a_removed_option_would_be_caught() -> None:
    with pytest.raises(Exception, match="No such option: --no-such-option"):
        parse_command("medlens train seg data --out run --no-such-option 1")
