"""The demo's report: a table (markdown and console), report.json, and two plots."""

from __future__ import annotations

import json
from pathlib import Path

from clipkd.engine.logger import read_metrics

ROWS = ("teacher", "baseline", "clipkd")
COLUMNS = (("zeroshot_top1", "zero-shot top-1", "%"), ("zeroshot_top5", "top-5", "%"),
           ("t2i_r1", "text→image R@1", "%"), ("t2i_r5", "R@5", "%"), ("i2t_r1", "image→text R@1", "%"),
           ("i2t_r5", "R@5", "%"), ("params", "params (M)", "M"), ("image_latency_ms", "image ms", "ms"))

NOTES = """Teacher: LiT heads (frozen pretrained EfficientNet-Lite0 and MiniLM towers, {teacher_px} px) trained on
{teacher_pairs} pairs; the students learn from {train}: the "big teacher, small data" case distillation is for.
Zero-shot: {test_zeroshot} single Fashion-MNIST test items, 10 classes, held-out prompt phrasings.
Retrieval: {test} test pairs (30% two-item scenes), held-out caption phrasings; each caption's own image is
the only correct answer, so identical caption texts of other images count as misses (duplicates are not merged).
Students: the same tiny open_clip ViT ({student}), same seed, budget ({steps} steps x {batch}) and augmentation
(random resized crops, scale {crop}); `clipkd` = {recipe} (chosen on the val split) against the teacher's stored
embeddings of {views} augmented views per training pair (`clipkd reinforce`; view e mod {views} in epoch e),
`baseline` = task loss alone on fresh random crops. Gap recovered = (clipkd - baseline)
/ (teacher - baseline) on zero-shot top-1."""


def _cell(value, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.1f}"
    if unit == "M":
        return f"{value / 1e6:.1f}"
    return f"{value:.2f}"


def table(report: dict) -> str:
    head = "| model | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(_cell(report[row][k], u) for k, _, u in COLUMNS) + " |")
    t, b, c = (report[r]["zeroshot_top1"] for r in ROWS)
    if t > b:
        lines.append(f"\nGap recovered by distillation: {(c - b) / (t - b):.0%} of teacher - baseline "
                     f"({100 * b:.1f} -> {100 * c:.1f}, teacher {100 * t:.1f}).")
    return "\n".join(lines)


def _plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for recipe in ("baseline", "clipkd"):
        rows = read_metrics(report[recipe]["run_dir"], "train")
        ax.plot([r["step"] for r in rows], [r["train/task"] for r in rows], label=f"{recipe}: task (CLIP) loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.savefig(out / "loss_curves.png", dpi=120)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    keys = [("zeroshot_top1", "zero-shot top-1"), ("t2i_r5", "text→image R@5"), ("i2t_r5", "image→text R@5")]
    width = 0.25
    for i, row in enumerate(ROWS):
        ax.bar([j + i * width for j in range(len(keys))], [100 * report[row][k] for k, _ in keys], width, label=row)
    ax.set_xticks([j + width for j in range(len(keys))], [label for _, label in keys])
    ax.set_ylabel("%")
    ax.legend()
    fig.savefig(out / "accuracy.png", dpi=120)
    return ["loss_curves.png", "accuracy.png"]


def deployment(report: dict) -> str:
    """The clipkd student's export and card, as report.md shows them."""
    deploy = report["deploy"]
    q = deploy["int8"]
    return (f"## Deployment\n\nThe clipkd student exported to `{deploy['export']}` (open_clip folder, ONNX encoders, "
            f"int8 variant) and its card in `{deploy['card']}` ({deploy['machine']['cpu']}, "
            f"{deploy['machine']['threads']} threads):\n\n{deploy['table']}\n\n"
            f"int8 ONNX: {q['bytes'] / 2**20:.1f} MiB, mean cosine to float32 image {q['cosine']['image']:.4f} / "
            f"text {q['cosine']['text']:.4f}, zero-shot top-1 {100 * q['acc1']:.1f} "
            f"({100 * q['acc1_change']:+.1f} points against float32)"
            + (f"; refused by its acceptance bar, not written: {'; '.join(q['reasons'])}" if not q.get("accepted", True)
               else "") + ".\n")


def write_demo_report(report: dict, out: Path) -> str:
    """Write report.json, report.md and the plots; return the table."""
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = table(report)
    plots = _plots(report, out)
    setup = report["setup"]
    md = f"# clipkd demo ({setup['mode']})\n\n{text}\n\n" + NOTES.format(**setup) + "\n\n" + \
        "\n".join(f"![{p}]({p})" for p in plots) + "\n\n" + (deployment(report) + "\n" if "deploy" in report else "") \
        + f"Total time: {setup['seconds']} s.\n"
    (out / "report.md").write_text(md)
    return text
