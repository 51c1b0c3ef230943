"""``card.md``: the card's figures as one markdown table (student, teacher(s), student ÷ first teacher), the
evaluation results (benchmark accuracies in percent) and the export's smaller ONNX variants with their verdicts."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from clipkd.losses.recipes import weights_text

Row = tuple[str, Callable[[dict], Optional[float]], str]


def _latency(engine: str, side: str, batch: int) -> Callable[[dict], Optional[float]]:
    return lambda m: m["latency_ms"].get(engine, {}).get(side, {}).get(batch)


def rows(batches: list[int], engines: list[str]) -> list[Row]:
    """(label, value getter, number format) of each table row."""
    out: list[Row] = [
        ("parameters, image tower (M)", lambda m: m["params"]["image"] / 1e6, ".2f"),
        ("parameters, text tower (M)", lambda m: m["params"]["text"] / 1e6, ".2f"),
        ("GFLOPs per image", lambda m: m["flops"]["image"] / 1e9, ".3f"),
        ("GFLOPs per caption", lambda m: m["flops"]["text"] / 1e9, ".3f"),
    ]
    names = {"pytorch": "PyTorch", "onnxruntime": "onnxruntime", "pytorch_cuda": "PyTorch CUDA"}
    for side in ("image", "text"):
        for engine in engines:
            for b in batches:
                out.append((f"{side} latency, batch {b}, {names.get(engine, engine)} (ms)", _latency(engine, side, b),
                            ".2f"))
    out += [("ONNX files, float32 (MiB)", lambda m: m["bytes"].get("onnx", 0) / 2**20 or None, ".2f"),
            ("open_clip weights (MiB)", lambda m: m["bytes"].get("open_clip", 0) / 2**20 or None, ".2f")]
    return out


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(card: dict[str, Any]) -> str:
    """The markdown comparison table of a card."""
    models = card["models"]
    engines = [e for e in ("pytorch", "onnxruntime", "pytorch_cuda") if e in models[0]["latency_ms"]]
    header = [""] + [f"{m['role']}: {m['model']}" for m in models]
    ratio = len(models) > 1
    header += [f"{models[0]['role']} ÷ {models[1]['role']}"] if ratio else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, get, fmt in rows(card["batches"], engines):
        values = [get(m) for m in models]
        cells = [_cell(v, fmt) for v in values]
        if ratio:
            cells.append(_cell(values[0] / values[1], ".3f") if values[0] and values[1] else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Benchmark metrics stored as fractions (zero-shot top-k and per-class recall, retrieval recall@K and its mean, the
# demo's zeroshot_top1 / t2i_r1 / i2t_r1): shown in percent, as `clipkd eval` and `clipkd report` show them.
FRACTION = re.compile(r"(acc\d+|top\d+|recall(@\d+)?|_r\d+)$")


def _metric_row(name: str, value: float) -> str:
    """A metric's table row: benchmark fractions as ``name (%)`` in percent, anything else (losses) as it is."""
    metric = name.split(" (")[0].rsplit("/", 1)[-1]
    if FRACTION.search(metric):
        return f"| {name} (%) | {100 * value:.2f} |"
    return f"| {name} | {value:.4g} |"


def evaluation(card: dict[str, Any]) -> str:
    """The evaluation results as a markdown table (empty when there are none)."""
    ev = card["evaluation"]
    found = [(k.removeprefix("eval/"), v) for k, v in sorted(ev["run"].items()) if not k.endswith(("pairs", "skipped"))]
    for r in ev["results"]:
        who = f"{r['side'] or r['model']}" if r.get("side") or r.get("model") else ""
        found += [(f"{r['dataset']}/{k}" + (f" ({who})" if who else ""), v) for k, v in r["metrics"].items()]
    if not found:
        return ""
    return "\n".join(["| metric | value |", "|---|---|", *(_metric_row(k, v) for k, v in found)])


def variants(card: dict[str, Any]) -> str:
    """The export's int8/fp16 variants and their verdicts as a markdown table (empty when there are none)."""
    found, bar = card.get("variants") or {}, card.get("variant_bar") or {}
    if not found:
        return ""
    lines = [f"Judged against the float32 export, each image and caption run alone; acceptance bar: mean cosine "
             f">= {bar.get('min_cosine', '?')} per side, at most {bar.get('max_acc1_drop', '?')} points of zero-shot "
             "top-1 lost (when measured). A refused variant was not written.", "",
             "| variant | MiB | mean cosine to float32 (image / text) | zero-shot top-1 change (points) | verdict |",
             "|---|---|---|---|---|"]
    for kind, v in found.items():
        cos = " / ".join(f"{v['cosine'].get(side, float('nan')):.5f}" for side in ("image", "text"))
        change = f"{100 * v['acc1_change']:+.2f}" if "acc1_change" in v else "-"
        verdict = "accepted" if v.get("accepted", True) else "refused: " + "; ".join(v.get("reasons", []))
        lines.append(f"| {kind} | {v['bytes'] / 2**20:.2f} | {cos} | {change} | {verdict} |")
    return "\n".join(lines)


def recipe_words(card: dict[str, Any]) -> str:
    """``recipe `fd``` or, when the run set its own loss weights, those too (the recipe's are then not used)."""
    weights = card.get("weights")
    if not weights:
        return f"recipe `{card['recipe']}`"
    return f"recipe `{card['recipe']}` with its own loss weights: {weights_text(weights)}"


def markdown(card: dict[str, Any]) -> str:
    """The whole ``card.md``."""
    student = card["models"][0]
    teachers = ", ".join(m["model"] for m in card["models"][1:]) or "no teacher (baseline)"
    m = card["machine"]
    where = f"{m['cpu']}, {m['threads']} threads" + (f"; GPU {m['gpu']}" if m["gpu"] else "")
    parts = [f"# Model card: {student['model']}, distilled from {teachers}", "",
             f"Run `{card['run']}`, checkpoint step {card['step']}, {recipe_words(card)}.", "",
             f"Measured on {where}. Latency: median wall time per batch after warm-up; onnxruntime runs the exported "
             "float32 encoders (`clipkd export`); FLOPs from PyTorch's FLOP counter (batch of one).", "",
             table(card)]
    ev = evaluation(card)
    if ev:
        parts += ["", "## Evaluation", "", "Benchmark accuracies and recalls in percent, as `clipkd eval` and "
                  "`clipkd report` show them; losses as they are.", "", ev]
    smaller = variants(card)
    if smaller:
        parts += ["", "## Smaller ONNX variants", "", smaller]
    return "\n".join(parts) + "\n"
