"""Uniform weight average ("model soup") of model folders that share one architecture and plan.

Model soups (Wortsman et al. 2022) average the weights of fine-tunes that start from the same
weights; `polyp_cpu_training.md` section 15 uses this to test whether averaging two stage-2
fine-tunes of one CPU stage 1 lifts the polyp recipe. The first member's card is kept, with
``extra.soup_of`` naming the members and a fresh sha256.

Run::

    python benchmarks/weight_soup.py runs/soup runs/a/last runs/b/last [...]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch


def average_models(members: list[Path], out: Path) -> Path:
    """Write the uniform average of ``members``' weights to the model folder ``out``."""
    from medlens.models.zoo import load_model, save_model

    loaded = [load_model(member) for member in members]
    states = [network.state_dict() for network, _ in loaded]
    averaged = {}
    for key, value in states[0].items():
        # integer buffers (BatchNorm's num_batches_tracked) are counters, not weights
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            averaged[key] = value
    network, card = loaded[0]
    network.load_state_dict(averaged)
    extra = {**card.extra, "soup_of": [str(member) for member in members]}
    save_model(network, out, dataclasses.replace(card, extra=extra))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("members", type=Path, nargs="+", help="model folders to average")
    args = parser.parse_args()
    print("wrote", average_models(args.members, args.out))


if __name__ == "__main__":
    main()
