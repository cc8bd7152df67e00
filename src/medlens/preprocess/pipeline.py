"""Pipelines: an ordered list of transforms, saved to and loaded from YAML.

Training and inference load the same YAML file, so they apply exactly the same chain. A
pipeline appends one provenance entry per step to ``metadata["provenance"]``.

YAML layout::

    medlens_pipeline: 1
    name: mri
    transforms:
      - name: reorient
        orientation: RAS
      - name: resample
        spacing_mm: [1.0, 1.0, 1.0]
      - name: z_score
        foreground_only: true

Presets: ``ct``, ``mri``, ``endoscopy`` (see :data:`PRESETS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import yaml

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocess.atomic_text import write_text_atomic
from medlens.preprocess.base import REGISTRY, Transform

FORMAT_VERSION = 1


@dataclasses.dataclass
class Pipeline:
    """Apply transforms in order: ``image = pipeline(image)`` or
    ``image, label = pipeline(image, label=label)`` (geometric steps move both alike).

    Example:
        >>> from medlens.preprocess import Resample, ZScore
        >>> pipeline = Pipeline([Resample(spacing_mm=2.0), ZScore()], name="demo")
        >>> Pipeline.from_yaml(pipeline.to_yaml()).to_yaml() == pipeline.to_yaml()
        True
    """

    transforms: list[Transform]
    name: str = "custom"

    @overload
    def __call__(self, image: Image) -> Image: ...

    @overload
    def __call__(self, image: Image, *, label: Image) -> tuple[Image, Image]: ...

    def __call__(self, image: Image, *, label: Image | None = None) -> Any:
        for transform in self.transforms:
            if label is None:
                image = transform(image)
            else:
                image, label = transform.apply_pair(image, label)
        if label is None:
            return image
        return image, label

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        return {
            "medlens_pipeline": FORMAT_VERSION,
            "name": self.name,
            "transforms": [t.to_dict() for t in self.transforms],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the YAML file atomically."""
        return write_text_atomic(path, self.to_yaml())

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "pipeline") -> Pipeline:
        if not isinstance(data, dict) or not isinstance(data.get("transforms"), list):
            raise MedlensError(
                "not a medlens pipeline (expected a mapping with a 'transforms' list)",
                path=source,
            )
        version = data.get("medlens_pipeline", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise MedlensError(f"unsupported pipeline format version {version}", path=source)
        transforms = [
            build_transform(item, source=source, position=index)
            for index, item in enumerate(data["transforms"])
        ]
        return cls(transforms, name=str(data.get("name", "custom")))

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "pipeline") -> Pipeline:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MedlensError(f"invalid YAML ({error})", path=source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path_or_preset: str | Path) -> Pipeline:
        """A YAML file, or the name of a preset (``ct``, ``mri``, ``endoscopy``)."""
        text = str(path_or_preset)
        if text in PRESETS:
            return preset(text)
        path = Path(path_or_preset)
        if not path.is_file():
            raise MedlensError(
                "no such pipeline file or preset",
                path=path,
                hint=f"give a YAML file or one of the presets: {', '.join(PRESETS)}",
            )
        return cls.from_yaml(path.read_text(), source=str(path))


def build_transform(item: Any, *, source: str = "pipeline", position: int = 0) -> Transform:
    """One ``{name: ..., **options}`` mapping -> transform, with clear errors."""
    if not isinstance(item, dict) or "name" not in item:
        raise MedlensError(
            f"transform #{position + 1} must be a mapping with a 'name'", path=source
        )
    options = dict(item)
    name = str(options.pop("name"))
    if name not in REGISTRY:
        raise MedlensError(
            f"unknown transform {name!r} (transform #{position + 1})",
            path=source,
            hint=f"valid names: {', '.join(sorted(REGISTRY))}",
        )
    cls = REGISTRY[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise MedlensError(
            f"unknown option(s) {', '.join(unknown)} for transform {name!r}",
            path=source,
            hint=f"valid options: {', '.join(sorted(valid)) or '(none)'}",
        )
    for key, value in options.items():
        if isinstance(value, list):
            options[key] = tuple(value)
    try:
        return cls(**options)
    except MedlensError as error:
        raise MedlensError(f"transform {name!r}: {error}", path=source) from None
    except (TypeError, ValueError) as error:
        raise MedlensError(f"transform {name!r}: bad option value ({error})", path=source) from None


def _presets() -> dict[str, list[dict[str, Any]]]:
    return {
        # CT: clean, remove table, 1.5 mm, abdomen window to [0, 1]
        "ct": [
            {"name": "repair_nonfinite"},
            {"name": "reorient", "orientation": "RAS"},
            {"name": "remove_background", "threshold_hu": -500.0, "fill_value": -1024.0},
            {"name": "resample", "spacing_mm": [1.5, 1.5, 1.5]},
            {"name": "ct_window", "window": "abdomen"},
        ],
        # MRI: clean, N4, 1 mm RAS, z-score in the head
        "mri": [
            {"name": "repair_nonfinite"},
            {"name": "reorient", "orientation": "RAS"},
            {"name": "n4_bias_correction", "shrink_factor": 2},
            {"name": "resample", "spacing_mm": [1.0, 1.0, 1.0]},
            {"name": "clip_percentiles", "low": 0.5, "high": 99.5},
            {"name": "z_score", "foreground_only": True},
        ],
        # endoscopy frames: remove specular highlights, balance colour
        "endoscopy": [
            {"name": "specular_inpaint"},
            {"name": "gray_world"},
        ],
    }


PRESETS: tuple[str, ...] = ("ct", "mri", "endoscopy")


def preset(name: str) -> Pipeline:
    """A built-in pipeline by name: ``ct``, ``mri`` or ``endoscopy``."""
    presets = _presets()
    if name not in presets:
        raise MedlensError(f"unknown preset {name!r}", hint=f"presets: {', '.join(presets)}")
    return Pipeline.from_dict({"name": name, "transforms": presets[name]}, source=f"preset {name}")


def pipeline_of(transforms: Sequence[Transform] | Pipeline) -> Pipeline:
    return transforms if isinstance(transforms, Pipeline) else Pipeline(list(transforms))
