"""A small self-contained HTML page showing predicted label maps over their images.

For each input: three orthogonal cuts through the centre of the predicted foreground (one
view for 2D frames), every label in its own colour over the grey (or RGB) image, and a table of
label sizes in mL (3D) or mm² (2D) from the voxel spacing. Plots are inline PNGs, so the page
opens offline and can be mailed as one file.

Example:
    >>> import numpy as np
    >>> from medlens.image import Image
    >>> image = Image(np.random.default_rng(0).random((1, 20, 24, 16)).astype(np.float32))
    >>> mask = np.zeros((1, 20, 24, 16), np.uint8)
    >>> mask[0, 5:10, 6:12, 4:8] = 1
    >>> label = image.with_array(mask, labels={0: "background", 1: "anterior"})
    >>> rows = label_sizes(label)
    >>> rows[0]["label"], rows[0]["voxels"], rows[0]["size"]
    ('anterior', 120, '0.12 mL')
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

import numpy as np

from medlens.evaluate.report import figure_to_base64, image_tag, table_html, write_report
from medlens.image import Image
from medlens.infer.statistics import label_statistics

#: label colours (RGB 0..1), cycled for label values 1, 2, ...
COLOURS = (
    (0.95, 0.25, 0.20),
    (0.15, 0.55, 0.95),
    (0.25, 0.85, 0.30),
    (0.98, 0.80, 0.10),
    (0.75, 0.35, 0.90),
    (0.10, 0.85, 0.85),
)


def label_sizes(label: Image, image: Image | None = None) -> list[dict[str, object]]:
    """Voxel count and physical size of each non-background label, as text (mL in 3D, mm²
    in 2D with a known spacing, pixels in pictures: :mod:`medlens.infer.statistics`)."""
    shown = {"mL": "{:.2f} mL", "mm2": "{:.1f} mm²", "px": "{:.0f} px"}
    return [
        {
            "label": row["label"],
            "value": row["label_value"],
            "voxels": row["voxels"],
            "size": shown[str(row["unit"])].format(row["size"]),
        }
        for row in label_statistics(label, image)
    ]


def _grey(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, [0.5, 99.5])
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1)


def _cuts(image: Image, label: Image) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(title, background (rows, cols[, 3]), labels (rows, cols), aspect) for each view."""
    pixels = image.numpy().astype(np.float32)
    values = label.numpy()[0]
    spacing = np.asarray(label.spacing_mm, dtype=float)
    if values.shape[2] == 1:  # 2D frame: rows are j (y), columns i (x)
        background = pixels[:, :, :, 0].transpose(2, 1, 0)
        background = _grey(background) if background.shape[2] == 3 else _grey(background[..., 0])
        return [("frame", background, values[:, :, 0].T, spacing[1] / spacing[0])]
    foreground = np.argwhere(values > 0)
    centre = (
        foreground.mean(axis=0).round().astype(int)
        if len(foreground)
        else np.array(values.shape) // 2
    )
    grey = _grey(pixels[0])
    i, j, k = (int(c) for c in centre)
    return [
        (f"slice k={k}", grey[:, :, k].T, values[:, :, k].T, spacing[1] / spacing[0]),
        (f"slice j={j}", grey[:, j, :].T[::-1], values[:, j, :].T[::-1], spacing[2] / spacing[0]),
        (f"slice i={i}", grey[i, :, :].T[::-1], values[i, :, :].T[::-1], spacing[2] / spacing[1]),
    ]


def overlay_figure(image: Image, label: Image, *, title: str) -> str:
    """One row of views of ``label`` over ``image`` as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = _cuts(image, label)
    figure, axes = plt.subplots(1, len(cuts), figsize=(3.2 * len(cuts), 3.4), squeeze=False)
    for axis, (name, background, values, aspect) in zip(axes[0], cuts, strict=True):
        rgb = background if background.ndim == 3 else np.repeat(background[..., None], 3, axis=2)
        rgb = rgb.copy()
        for value in np.unique(values):
            if value == 0:
                continue
            colour = np.asarray(COLOURS[(int(value) - 1) % len(COLOURS)])
            region = values == value
            rgb[region] = 0.5 * rgb[region] + 0.5 * colour  # half-transparent: anatomy shows
        axis.imshow(rgb, interpolation="nearest", aspect=aspect)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    return figure_to_base64(figure)


@dataclasses.dataclass
class OverlayPage:
    """Collects one figure and the label sizes per prediction as it is made, then writes HTML.

    Only the rendered figure (a PNG data URI, for the first ``limit`` inputs: the page stays
    small) and the size rows are kept, never the images, so a folder of any length fits.
    """

    model_name: str
    labels: dict[int, str]
    limit: int = 50
    figures: list[str] = dataclasses.field(default_factory=list)
    rows: list[dict[str, object]] = dataclasses.field(default_factory=list)
    count: int = 0

    def add(self, name: str, image: Image, label: Image) -> None:
        if self.count < self.limit:
            uri = overlay_figure(image, label, title=name)
            self.figures.append(f"<figure>{image_tag(uri, name)}</figure>")
        self.rows.extend({"input": name, **row} for row in label_sizes(label, image))
        self.count += 1

    def write(self, path: str | Path) -> Path:
        def swatch(value: int, name: str) -> str:
            rgb = ",".join(str(int(255 * c)) for c in COLOURS[(value - 1) % len(COLOURS)])
            return f"<span style='color:rgb({rgb})'>&#9632; {html.escape(name)}</span>"

        legend = " ".join(swatch(v, name) for v, name in sorted(self.labels.items()) if v)
        sections = [
            ("Labels", f"<p>{legend}</p>"),
            ("Overlays", f"<div class='cases'>{''.join(self.figures)}</div>"),
            ("Sizes", table_html(self.rows, ["input", "label", "voxels", "size"])),
        ]
        subtitle = (
            f"model {self.model_name}; {self.count} input(s); views cut through the prediction"
        )
        return write_report(
            path, title=f"medlens predict: {self.model_name}", sections=sections, subtitle=subtitle
        )
