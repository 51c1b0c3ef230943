"""Tables and charts from clip_benchmark-style result files.

Each JSON file holds one evaluation::

    {"dataset": str, "model": str, "pretrained": str | None,
     "task": "zeroshot_classification" | "zeroshot_retrieval", "metrics": {name: float}}

Metric values are fractions; tables and charts show them as percentages. A zero-shot result that lists its
class names (``classnames``, as clipkd writes them) and has at most 5 of them shows no ``acc5``: it is 100% by
construction (clipkd no longer writes it then; older result files may hold it).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["load_results", "markdown_table", "chart_figure", "bar_chart", "write_report"]

REQUIRED_KEYS = ("dataset", "model", "pretrained", "task", "metrics")
ACC5_MIN_CLASSES = 6
"""Classes from which ``acc5`` means something (fewer: every class is in the top 5); defined here, where no
torch is imported, and used by :mod:`clipkd.eval.zeroshot` too."""
MISSING = "–"
PathLike = Union[str, Path]
Column = tuple[str, str]  # (dataset, metric)


def _load_one(path: Path) -> dict:
    """Read and validate one result file; errors name the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a JSON result ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (required: {list(REQUIRED_KEYS)})")
    for key in ("dataset", "model", "task"):
        if not isinstance(data[key], str):
            raise ValueError(f"{path}: '{key}' must be a string, got {data[key]!r}")
    if data["pretrained"] is not None and not isinstance(data["pretrained"], str):
        raise ValueError(f"{path}: 'pretrained' must be a string or null, got {data['pretrained']!r}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: 'metrics' must be an object, got {type(metrics).__name__}")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: metric '{name}' must be a number, got {value!r}")
    return {**data, "metrics": {k: float(v) for k, v in metrics.items()}}


def load_results(paths: Sequence[PathLike]) -> list[dict]:
    """Load clip_benchmark-style result files, in the given order."""
    return [_load_one(Path(p)) for p in paths]


def _label(result: dict) -> str:
    pretrained = result.get("pretrained")
    return f"{result['model']} ({pretrained})" if pretrained else result["model"]


def _collect(
    results: list[dict], metrics: Optional[Sequence[str]]
) -> tuple[list[str], list[Column], dict[tuple[str, Column], float]]:
    """Row labels, columns and ``{(label, column): value}``, in order of first appearance.

    With ``metrics`` only those metric names are kept, in that order within each dataset. A later
    result for the same model, dataset and metric replaces an earlier one.
    """
    labels: list[str] = []
    per_dataset: dict[str, list[str]] = {}
    values: dict[tuple[str, Column], float] = {}
    for result in results:
        label, dataset = _label(result), result["dataset"]
        if label not in labels:
            labels.append(label)
        names = per_dataset.setdefault(dataset, [])
        for name, value in _shown_metrics(result).items():
            if metrics is not None and name not in metrics:
                continue
            if name not in names:
                names.append(name)
            values[(label, (dataset, name))] = float(value)
    columns: list[Column] = []
    for dataset, names in per_dataset.items():
        if metrics is not None:
            names = [m for m in metrics if m in names]
        columns.extend((dataset, name) for name in names)
    return labels, columns, values


def _shown_metrics(result: dict) -> dict[str, float]:
    """A result's metrics as tables and charts show them: without ``acc5`` when the result lists at most 5 class
    names (trivially 100%; :data:`ACC5_MIN_CLASSES`)."""
    classnames = result.get("classnames")
    if isinstance(classnames, list) and len(classnames) < ACC5_MIN_CLASSES:
        return {k: v for k, v in result["metrics"].items() if k != "acc5"}
    return result["metrics"]


def _percent(value: Optional[float]) -> str:
    return MISSING if value is None else f"{100.0 * value:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(results: list[dict], metrics: Optional[Sequence[str]] = None) -> str:
    """A Markdown table: one row per model, one column per (dataset, metric), values in %."""
    if not results:
        raise ValueError("no results to tabulate")
    labels, columns, values = _collect(results, metrics)
    header = ["Model"] + [f"{dataset} {metric}" for dataset, metric in columns]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * len(columns)) + "|",
    ]
    for label in labels:
        cells = [_cell(label)] + [_percent(values.get((label, col))) for col in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LABEL_CHARS = 34  # category and legend labels wrap at this many characters (long names break anywhere)
FONT = 8  # points, tick and legend labels


def _wrap(text: str, width: int = LABEL_CHARS) -> str:
    """``text`` on lines of at most ``width`` characters; a longer word (a long benchmark name) is split."""
    lines = [line for part in text.splitlines()
             for line in (textwrap.wrap(part, width, break_long_words=True, break_on_hyphens=False) or [""])]
    return "\n".join(lines)


def chart_figure(results: list[dict], metrics: Optional[Sequence[str]] = None, title: Optional[str] = None):
    """The grouped bar chart as a matplotlib ``Figure`` (Agg canvas attached): see :func:`bar_chart`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    labels, columns, values = _collect(results, metrics)
    names = [_wrap(f"{d}\n{m}") for d, m in columns]
    legend_names = [_wrap(label, 2 * LABEL_CHARS) for label in labels]
    line = FONT * 1.35 / 72  # inches per text line
    # Horizontal bars, one group per (dataset, metric): a group is as tall as its bars and its wrapped label.
    group = max(0.2 * len(labels) + 0.25, line * (max(n.count("\n") for n in names) + 1) + 0.15)
    legend_rows = sum(n.count("\n") + 1 for n in legend_names)
    height = min(300.0, 1.2 + group * len(columns) + line * legend_rows + 0.2)
    fig = Figure(figsize=(10.0, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bar = 0.8 / max(1, len(labels))
    top = 0.0
    for i, label in enumerate(labels):
        ys, widths = [], []
        for j, col in enumerate(columns):
            value = values.get((label, col))
            if value is not None and math.isfinite(value):
                ys.append(j - 0.4 + bar * (i + 0.5))
                widths.append(100.0 * value)
        bars = ax.barh(ys, widths, height=bar, label=legend_names[i])
        ax.bar_label(bars, fmt="%.1f", fontsize=FONT - 2, padding=2)
        top = max([top, *widths])
    ax.set_yticks(range(len(columns)), names, fontsize=FONT)
    ax.set_ylim(len(columns) - 0.5, -0.5)  # first column on top, each group's first model on top
    ax.set_xlim(0.0, max(100.0, top) * 1.1)  # room for the value labels
    ax.set_xlabel("%")
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_title(_wrap(title or "Evaluation results", 90))
    fig.legend(loc="outside lower center", fontsize=FONT, ncols=1 if max(map(len, labels)) > 30 else 3)
    return fig


def bar_chart(
    results: list[dict],
    path: PathLike,
    metrics: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Grouped bar chart as a PNG: one group per (dataset, metric), one bar per model, in %.

    Bars are horizontal, so long benchmark and model names stay readable: the names are wrapped at the left of
    their group and in the legend below, and the figure grows with the number of bars.
    """
    fig = chart_figure(results, metrics, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def write_report(paths: Sequence[PathLike], out_dir: PathLike) -> tuple[Path, Path]:
    """Write ``report.md`` (the table) and ``report.png`` (the chart) into ``out_dir``."""
    results = load_results(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / "report.md"
    md_path.write_text(markdown_table(results), encoding="utf-8")
    png_path = bar_chart(results, out / "report.png")
    return md_path, png_path
