"""`clipkd demo`: a real pretrained teacher makes a tiny student better, offline, on 2 CPU cores.

1. Fashion-MNIST (Debian's dataset-fashion-mnist) -> webdataset shards with varied, composed captions.
2. A LiT teacher (frozen EfficientNet-Lite0 + all-MiniLM-L6-v2) whose heads learn from far more pairs than the
   students see (big teacher, small data), run once over K augmented views of every student training pair
   (`clipkd reinforce`: reinforced data).
3. The same tiny open_clip ViT student trained twice, same budget, seed and augmentation: `baseline` (online random
   crops, no teacher) and `clipkd` (:data:`DISTILL`, chosen on val; the stored views replayed, no teacher forward).
4. Zero-shot and retrieval on the test split for all three, parameters and latency -> report.md/.json/PNGs.
5. The clipkd student exported (`clipkd export`: open_clip folder, ONNX encoders, int8 variant judged on the test
   split) and its model card written (`clipkd card`: student beside teacher).
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from clipkd.config import BenchmarkSpec, validate_config
from clipkd.demo.fmnist import prepare_dataset
from clipkd.demo.teacher import build_teacher
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.eval.runner import Benchmark
from clipkd.losses.recipes import weights_text
from clipkd.models.composite import LIT_NAME
from clipkd.models.encoders import ClipEncoder
from clipkd.models.open_clip_adapter import create_open_clip_encoder
from clipkd.offline import set_offline

STUDENT = "clipkd-tiny-vit"
SIZES = {  # teacher: the pairs its heads learn from: None every training item but val's (58,000 pairs, the students'
    # images among them, with other captions and scenes), 0 the students' own pairs, N a split of N such pairs;
    # teacher_px: its towers' resolution; test_zeroshot: the zero-shot test's images (10,000: all of t10k)
    "quick": {"train": 512, "val": 128, "test": 256, "test_zeroshot": 256, "teacher": 2000, "teacher_px": 64,
              "steps": 40, "teacher_steps": 150, "batch": 64, "views": 2},
    "full": {"train": 2000, "val": 2000, "test": 1000, "test_zeroshot": 10000, "teacher": None, "teacher_px": 64,
             "steps": 600, "teacher_steps": 3000, "batch": 128, "views": 16},
}
# the distilled student's recipe, chosen on the val split (configs/ablation-tuned.yaml, benchmarks/RESULTS.md §19)
DISTILL = {"recipe": "clipkd", "weights": {"task": 1.0, "crd": 1.0, "fd": 500.0}}
CROP_SCALE = (0.8, 1.0)  # the students' augmentation: a random resized crop, replayed from the stored views
METRICS = {"zeroshot_top1": "acc1", "zeroshot_top5": "acc5", "mean_per_class_recall": "mean_per_class_recall",
           "t2i_r1": "image_retrieval_recall@1", "t2i_r5": "image_retrieval_recall@5",
           "i2t_r1": "text_retrieval_recall@1", "i2t_r5": "text_retrieval_recall@5"}


def student_config(out: Path, recipe: str, data: dict, heads: Path, cache: Path, size: dict, seed: int) -> dict:
    """The config of a demo student: ``baseline`` (the task loss alone) or ``clipkd`` (:data:`DISTILL`)."""
    distill = {"recipe": "baseline"} if recipe == "baseline" else copy.deepcopy(DISTILL)
    return {
        "run_dir": str(out / "runs" / f"{recipe}-seed{seed}"), "seed": seed, "device": "auto",
        "teacher": {"model": LIT_NAME, "pretrained": str(heads)}, "student": {"model": STUDENT},
        "distill": {**distill, "teacher_cache": str(cache)},
        "data": {"format": "webdataset", "train": data["train"], "num_samples": size["train"],
                 "batch_size": size["batch"], "workers": 2, "crop_scale": list(CROP_SCALE), "shuffle_buffer": 500},
        "optim": {"lr": 1e-3, "warmup_steps": max(1, size["steps"] // 10), "steps": size["steps"]},
        "checkpoint": {"every_steps": size["steps"], "keep_last": 1},
        "logging": {"every_steps": 5, "tensorboard": False, "progress": True},
    }


def image_latency_ms(enc: ClipEncoder, repeats: int = 30) -> float:
    """Median image-encoder latency for one image on this machine."""
    x = torch.randn(1, 3, *enc.image_size)
    enc.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            enc.encode_image(x)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def evaluate(enc: ClipEncoder, benchmarks: list[Benchmark]) -> dict:
    out: dict = {}
    for b in benchmarks:
        out.update(b.evaluate(enc))
    row = {name: out[key] for name, key in METRICS.items()}
    row["params"] = int(sum(p.numel() for p in enc.parameters()))
    row["image_latency_ms"] = image_latency_ms(enc)
    return row


def zeroshot_spec(name: str, shards: list[str], data_dir: Path) -> BenchmarkSpec:
    """Zero-shot Fashion-MNIST on single-item shards, with the held-out prompt phrasings."""
    return BenchmarkSpec(name=name, task="zeroshot", format="webdataset", path=shards, label_key="cls",
                         classnames=str(data_dir / "classnames.txt"), templates=str(data_dir / "prompts.txt"))


def benchmarks(data_dir: Path, data: dict) -> list[Benchmark]:
    zs = zeroshot_spec("fashion-mnist", data["test_zeroshot"], data_dir)
    rt = BenchmarkSpec(name="fashion-mnist-captions", task="retrieval", format="webdataset", path=data["test"])
    return [Benchmark(zs), Benchmark(rt)]


ABLATION_BASE = "ablation-base.yaml"


def write_ablation_base(out: Path, config: dict, data_dir: Path, data: dict) -> Path:
    """The demo's clipkd student run as the base of `clipkd ablate` (configs/ablation-demo.yaml): judged on the
    val split's zero-shot (``fashion-mnist-val``, for choosing) and the test split's (``fashion-mnist``)."""
    import yaml

    specs = [zeroshot_spec("fashion-mnist-val", data["val_zeroshot"], data_dir),
             zeroshot_spec("fashion-mnist", data["test_zeroshot"], data_dir)]
    base = {**config, "run_dir": str(out / "runs" / "ablation-base"),
            "logging": {**config["logging"], "progress": False},
            "eval": {"benchmarks": [s.model_dump(mode="json", exclude_none=True) for s in specs]}}
    from clipkd.config_paths import resolve_paths

    path = out / ABLATION_BASE
    path.parent.mkdir(parents=True, exist_ok=True)  # with the data cached elsewhere (`work`), nothing made it yet
    absolute = resolve_paths(base, Path.cwd())  # read from its own folder, the file must not hold relative paths
    path.write_text(yaml.safe_dump(absolute, sort_keys=False), encoding="utf-8")
    return path


def reinforce(cfg, out: Path, views: int) -> Path:
    """The teacher once over ``views`` augmented views of every training pair (`clipkd reinforce`), reused when a
    previous demo built it with the same teacher and data; a folder of other settings is rebuilt."""
    from clipkd.build.reinforce import run_build
    from clipkd.errors import ConfigError
    from clipkd.reinforce.settings import BuildOptions

    opts = BuildOptions(out=out, views=views, dtype="bf16", batch_size=128)
    try:
        run_build(cfg, opts)
    except ConfigError:  # another teacher or data: this folder is the demo's own
        shutil.rmtree(out)
        run_build(cfg, opts)
    return out


def _train(cfg) -> None:
    """Train a student, or finish it when a previous demo left it (complete or interrupted) with this config;
    a student of another config is moved aside and trained anew (the same rule as a study's runs). Stopped by a
    signal before its end, the demo stops too (exit 0, as `clipkd train` does): nothing half-trained is reported."""
    from clipkd.ablate.runs import train

    outcome = train(cfg)
    if outcome.stopped_by and not outcome.complete:
        print(f"stopped by {outcome.stopped_by} while training {cfg.run_dir}; checkpoint written; run the same "
              "command to continue")
        raise SystemExit(0)


def deploy(cfg, out: Path, zeroshot: Benchmark, report: dict, quick: bool) -> dict:
    """Export the clipkd student (open_clip + ONNX + int8, the int8 judged on ``zeroshot``) and write its card with
    the demo's results; what the report shows of them."""
    from clipkd.commands.card import write_card
    from clipkd.commands.export import export_student
    from clipkd.commands.source import resolve_source

    source = resolve_source(cfg.run_dir)
    shutil.rmtree(out / "export", ignore_errors=True)  # the demo's own output: an earlier demo's export never mixes in
    manifest = export_student(source, out / "export", ["open_clip", "onnx"], ["int8"], zeroshot)
    results = [{"dataset": "fashion-mnist", "side": row, "metrics": {k: report[row][k] for k in ("zeroshot_top1",
                "t2i_r1", "i2t_r1")}} for row in ("teacher", "baseline", "clipkd")]
    card = write_card(source, out / "card", results, student_onnx=out / "export" / "onnx", repeats=3 if quick else 10)
    from clipkd.export.card_render import table

    return {"export": str(out / "export"), "card": str(out / "card"), "table": table(card),
            "int8": manifest["formats"]["onnx"]["variants"]["int8"], "machine": card["machine"]}


def run_demo(out: Path, quick: bool = False, source: Optional[Path] = None, seed: int = 0,
             log: Callable[[str], None] = print, work: Optional[Path] = None) -> dict:
    """Run the whole story; write report.json, report.md and plots under ``out``; return the report.

    The shards and the trained teacher are cached under ``work`` (default ``out``) and reused.
    """
    set_offline()
    out, size = Path(out), SIZES["quick" if quick else "full"]
    work = Path(work) if work is not None else out
    started = time.perf_counter()
    data_dir = work / "data" / ("quick" if quick else "full")
    data = prepare_dataset(data_dir, source, train=size["train"], val=size["val"], test=size["test"], seed=0,
                           teacher=size["teacher"], test_zeroshot=size["test_zeroshot"])
    log(f"data: {size['train']} student train / {size['val']} val / {size['test']} test pairs, "
        f"{size['test_zeroshot']} zero-shot test images in {data_dir}")
    teacher_dir = work / "teacher" / ("quick" if quick else "full")
    teacher, heads, teacher_pairs = build_teacher(teacher_dir, data["train" if size["teacher"] == 0 else "teacher"],
                                                  size["teacher_steps"], image_size=size["teacher_px"])
    log(f"teacher: heads trained on {teacher_pairs} pairs at {size['teacher_px']} px")
    cache = teacher_dir / f"reinforced-k{size['views']}"
    base = student_config(out, "clipkd", data, heads, cache, size, 0)
    reinforce(validate_config(base), cache, size["views"])
    write_ablation_base(out, base, data_dir, data)
    log(f"teacher: {size['views']} augmented views of each training pair stored in {cache}")
    benches = benchmarks(data_dir, data)
    report: dict = {"teacher": evaluate(teacher, benches)}
    log(f"teacher: zero-shot top-1 {report['teacher']['zeroshot_top1']:.3f}")
    for recipe in ("baseline", "clipkd"):
        cfg = validate_config(student_config(out, recipe, data, heads, cache, size, seed))
        _train(cfg)
        weights = list_checkpoints(cfg.run_dir)[-1] / "student.safetensors"
        report[recipe] = evaluate(create_open_clip_encoder(STUDENT, str(weights)), benches)
        report[recipe]["run_dir"] = cfg.run_dir
        log(f"{recipe}: zero-shot top-1 {report[recipe]['zeroshot_top1']:.3f}")
    report["deploy"] = deploy(cfg, out, benches[0], report, quick)
    log(f"clipkd student exported to {out / 'export'}; model card {out / 'card' / 'card.md'}")
    report["setup"] = {"mode": "quick" if quick else "full", "seed": seed, **size, "student": STUDENT,
                       "teacher_pairs": teacher_pairs, "recipe": weights_text(DISTILL["weights"]), "teacher": LIT_NAME,
                       "crop": list(CROP_SCALE), "seconds": round(time.perf_counter() - started, 1)}
    from clipkd.demo.report import write_demo_report

    table = write_demo_report(report, out)
    log(table)
    return report

