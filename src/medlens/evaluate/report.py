"""One self-contained HTML report (plots as base64 PNG, inline CSS/JS; opens offline).

The page holds, in order: headline numbers with 95% confidence intervals, per-label box plots,
the failures and warnings (missing cases, labels only in the prediction), the worst cases as
overlays of prediction vs reference, speed figures when given, and the per-case table, which
sorts by any column when its header is clicked.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.io.atomic import atomic_output

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#1f2328;max-width:1200px}
h1{font-size:1.6em;margin-bottom:0.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa;cursor:pointer;user-select:none;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#fafbfc}
.note{color:#57606a;font-size:13px}.bad{color:#cf222e;font-weight:600}
.figs img{max-width:100%;border:1px solid #d0d7de;margin:4px}
.cases{display:flex;flex-wrap:wrap;gap:8px}.cases figure{margin:0;font-size:12px}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, column){
    th.addEventListener('click', function(){
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var ascending = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(ascending ? 'asc' : 'desc');
      rows.sort(function(a, b){
        var x = a.cells[column].dataset.v, y = b.cells[column].dataset.v;
        var fx = parseFloat(x), fy = parseFloat(y);
        var cmp = (!isNaN(fx) && !isNaN(fy)) ? fx - fy : String(x).localeCompare(String(y));
        if (isNaN(fx) !== isNaN(fy)) { cmp = isNaN(fx) ? 1 : -1; }
        return ascending ? cmp : -cmp;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def figure_to_base64(figure: Any) -> str:
    """PNG bytes of a matplotlib figure as a ``data:`` URI (closes the figure)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "undefined"
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return html.escape(str(value))


def table_html(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, sortable: bool = True
) -> str:
    """An HTML table; each cell keeps its raw value in ``data-v`` for sorting."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            raw = value if not (isinstance(value, float) and math.isnan(value)) else ""
            cells.append(f'<td data-v="{html.escape(str(raw))}">{_fmt(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    css = ' class="sortable"' if sortable else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def box_plots(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, group: str = "label"
) -> str:
    """Box plots of each metric per label (one panel per metric), as a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({row[group] for row in rows}, key=str)
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for axis, metric in zip(axes[0], metrics, strict=True):
        data = []
        for name in groups:
            values = np.asarray([r[metric] for r in rows if r[group] == name], dtype=float)
            data.append(values[np.isfinite(values)])
        parts = axis.boxplot(data, patch_artist=True, widths=0.6)
        for index, box in enumerate(parts["boxes"]):
            box.set_facecolor(colours[index % len(colours)])
            box.set_alpha(0.75)
        for index, values in enumerate(data):
            jitter = np.random.default_rng(index).uniform(-0.12, 0.12, values.size)
            axis.scatter(index + 1 + jitter, values, s=6, color="black", alpha=0.5, zorder=3)
        axis.set_xticks(range(1, len(groups) + 1), [str(g) for g in groups], rotation=30)
        axis.set_title(metric)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure_to_base64(figure)


def overlay_png(
    pred: np.ndarray, ref: np.ndarray, *, image: np.ndarray | None = None, title: str = ""
) -> str:
    """Middle slice through the largest error: agreement yellow, missed green, extra red.

    ``pred`` and ``ref`` are 2D or 3D label maps (any non-zero = foreground); 3D volumes are
    cut along the last axis at the slice with the most disagreeing voxels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred)
    ref = np.asarray(ref)
    background = None if image is None else np.asarray(image, dtype=np.float64)
    if pred.ndim == 3:
        error = (pred != ref).sum(axis=(0, 1))
        k = int(np.argmax(error)) if error.any() else int(np.argmax((ref > 0).sum(axis=(0, 1))))
        pred, ref = pred[:, :, k], ref[:, :, k]
        background = None if background is None else background[:, :, k]
        title = f"{title} (slice k={k})"
    # arrays are (i, j) = (x, y): transpose so that rows are y, as radiologists view them
    pred, ref = (pred > 0).T, (ref > 0).T
    rgb = np.zeros(pred.shape + (3,))
    if background is not None:
        background = background.T
        span = np.ptp(background) or 1.0
        rgb[:] = ((background - background.min()) / span)[..., None] * 0.8
    # colours half-transparent over an intensity image, so that the anatomy stays visible
    alpha = 0.55 if background is not None else 1.0
    for region, colour in (
        (pred & ref, (1.0, 0.85, 0.0)),
        (ref & ~pred, (0.1, 0.8, 0.1)),
        (pred & ~ref, (0.9, 0.1, 0.1)),
    ):
        rgb[region] = (1 - alpha) * rgb[region] + alpha * np.asarray(colour)
    figure, axis = plt.subplots(figsize=(3.4, 3.6))
    axis.imshow(rgb, interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    return figure_to_base64(figure)


def line_plot(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    xticks: Sequence[float] | None = None,
) -> str:
    """A simple step chart (FROC, precision-recall) as a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.6, 3.6))
    for name, x, y in series:
        axis.step(x, y, where="post", label=name, linewidth=2)
    if logx:
        axis.set_xscale("log", base=2)
    if xticks is not None:
        axis.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
        axis.set_xlim(min(xticks) / 1.5, max(xticks) * 1.2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure_to_base64(figure)


def write_report(
    path: str | Path,
    *,
    title: str,
    sections: Sequence[tuple[str, str]],
    subtitle: str = "",
) -> Path:
    """Write the HTML page atomically; ``sections`` are ``(heading, inner_html)`` pairs."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(subtitle)}</p>" if subtitle else "",
    ]
    for heading, inner in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{inner}")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    path = Path(path)
    with atomic_output(path) as temporary:
        temporary.write_text("".join(parts), encoding="utf-8")
    return path


def image_tag(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"
