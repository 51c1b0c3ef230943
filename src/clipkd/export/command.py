"""`clipkd export`: a run's student as an open_clip hub folder and/or ONNX encoders, each checked against PyTorch."""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

from clipkd.errors import ConfigError

FORMATS = ("open_clip", "onnx", "all")
MANIFEST = "export.json"
ONNX_PACKAGES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}
VARIANT_PACKAGES = {"fp16": {"onnxconverter_common": "onnxconverter-common"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `clipkd export` (nothing heavy imported)."""
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (its newest intact checkpoint), a checkpoint folder or its student.safetensors")
    p.add_argument("--format", default="all", help="open_clip, onnx or all (default: all; all writes DIR/open_clip "
                   "and DIR/onnx)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write int8 ONNX encoders (onnxruntime dynamic quantisation)")
    p.add_argument("--fp16", action="store_true", help="also write float16 ONNX encoders")
    p.add_argument("--zeroshot", metavar="FORMAT:PATH", default=None,
                   help="a zero-shot benchmark (as in `clipkd eval`) on which --quantize/--fp16 report their accuracy "
                   "change (default: only their embedding drift on probe inputs)")
    p.add_argument("--classnames", help="--zeroshot class names: a file (one per line) or 'imagenet' (default: the folder "
                   "names, or the label numbers)")
    p.add_argument("--templates", help="--zeroshot prompt templates: a file (one per line, '{}' = the class name), "
                   "'imagenet' or 'imagenet-simple' (default: the bare class name)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch for --zeroshot")


def _formats(value: str) -> list[str]:
    if value not in FORMATS:
        from clipkd.suggest import did_you_mean

        hint = did_you_mean(value, list(FORMATS))
        raise ConfigError(f"--format: unknown format '{value}' ({hint + ' ' if hint else ''}choose from "
                          f"{', '.join(FORMATS)})")
    return ["open_clip", "onnx"] if value == "all" else [value]


def _variants(args: argparse.Namespace) -> list[str]:
    return ([args.quantize] if args.quantize else []) + (["fp16"] if args.fp16 else [])


def _missing_packages(formats: list[str], variants: list[str]) -> list[str]:
    needed = dict(ONNX_PACKAGES) if "onnx" in formats else {}
    for kind in variants:
        needed.update(VARIANT_PACKAGES.get(kind, {}))
    return [dist for module, dist in needed.items() if importlib.util.find_spec(module) is None]


def _benchmark(args: argparse.Namespace):
    """The --zeroshot benchmark, validated and its index read, or None."""
    if not args.zeroshot:
        for flag, value in (("--classnames", args.classnames), ("--templates", args.templates)):
            if value:
                raise ConfigError(f"{flag} needs --zeroshot")
        return None
    from clipkd.eval.command import prepared_benchmarks

    spec_args = argparse.Namespace(
        zeroshot=[args.zeroshot], retrieval=[], benchmarks=None, root=None, batch_size=args.batch_size, workers=0,
        classnames=args.classnames, templates=args.templates, image_key=None, label_key=None, caption_key=None,
        split=None, first_caption_only=None)
    return prepared_benchmarks(spec_args)[0]


def preflight(args: argparse.Namespace):
    """Every flag checked before a model is built: ``(source, formats, variants, benchmark)``."""
    from clipkd.export.source import resolve_source

    formats, variants = _formats(args.format), _variants(args)
    if variants and "onnx" not in formats:
        raise ConfigError(f"--quantize/--fp16 make smaller ONNX encoders: use them with --format onnx or all, not "
                          f"{args.format}")
    if args.zeroshot and not variants:
        raise ConfigError("--zeroshot measures the accuracy change of --quantize int8 / --fp16: give one of them")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    missing = _missing_packages(formats, variants)
    if missing:
        raise ConfigError(f"exporting needs {', '.join(missing)}: pip install 'clipkd[export]'")
    return resolve_source(args.source), formats, variants, _benchmark(args)


def _folder(out: Path, fmt: str, formats: list[str]) -> Path:
    return out / fmt if len(formats) > 1 else out


def _heads_left_out(student_file: Path) -> list[str]:
    """The training-only tensors of a student checkpoint (everything but the encoder's weights)."""
    from safetensors import safe_open

    from clipkd.models.state_dict import CLIPKD_ENCODER_PREFIX

    with safe_open(str(student_file), "pt") as f:
        return sorted(k for k in f.keys() if not k.startswith(CLIPKD_ENCODER_PREFIX))


def export_open_clip(encoder, folder: Path) -> dict[str, Any]:
    """Write and check the open_clip folder; its manifest entry."""
    from clipkd.export.onnx_export import probe_captions, probe_images
    from clipkd.export.open_clip_hub import check_open_clip, write_open_clip

    files = write_open_clip(encoder, folder)
    diff = check_open_clip(encoder, folder, probe_captions(8), probe_images(encoder, 8))
    return {"files": _sizes(files), "max_abs_diff": diff}


def export_onnx_folder(encoder, folder: Path, variants: list[str], benchmark=None) -> dict[str, Any]:
    """Write and check the ONNX folder (and its variants); its manifest entry."""
    from clipkd.export.onnx_export import check_onnx, export_onnx
    from clipkd.export.variants import assess_variants, write_variant

    files = export_onnx(encoder, folder)
    entry: dict[str, Any] = {"files": _sizes(files), "max_abs_diff": check_onnx(encoder, folder)}
    for kind in variants:
        entry["files"].update(_sizes(write_variant(folder, kind)))
    if variants:
        entry["variants"] = assess_variants(folder, encoder, variants, benchmark)
    return entry


def _sizes(files: list[Path]) -> dict[str, int]:
    return {Path(f).name: Path(f).stat().st_size for f in files}


def _staged(write, folder: Path) -> dict[str, Any]:
    """``write(staging)`` into a temporary sibling of ``folder``, whose files move into ``folder`` only when it
    returns (its checks passed); a failed or killed export leaves ``folder`` as it was, and the staging folders
    of killed exports are removed by the next one."""
    import os
    import shutil

    from clipkd.files import TMP_PREFIX, fsync_dir

    for leftover in folder.parent.glob(f"{TMP_PREFIX}{folder.name}-*"):  # of an export that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = folder.parent / f"{TMP_PREFIX}{folder.name}-{os.getpid()}"
    try:
        entry = write(staging)
        folder.mkdir(parents=True, exist_ok=True)
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry["folder"] = str(folder.resolve())
    return entry


def export_student(source, out: Path, formats: list[str], variants: list[str], benchmark=None) -> dict[str, Any]:
    """Build the student of ``source`` and write each format; the manifest (also written as ``out/export.json``)."""
    from clipkd.export.source import load_student
    from clipkd.files import write_json

    encoder = load_student(source)
    manifest: dict[str, Any] = {
        "source": str(source.checkpoint.resolve()), "step": source.step, "student": source.config.student.model,
        "left_out": _heads_left_out(source.student_file), "formats": {}}
    for fmt in formats:
        started = time.perf_counter()
        folder = _folder(out, fmt, formats)
        folder.parent.mkdir(parents=True, exist_ok=True)
        entry = _staged(lambda tmp: export_open_clip(encoder, tmp) if fmt == "open_clip" else
                        export_onnx_folder(encoder, tmp, variants, benchmark), folder)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        manifest["formats"][fmt] = entry
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> list[str]:
    """Lines for the terminal: each format's folder and check, each variant's drift and accuracy change."""
    lines = [f"exported {manifest['student']} from {manifest['source']} (left out {len(manifest['left_out'])} "
             "distillation-only tensors)"]
    for fmt, entry in manifest["formats"].items():
        diff = entry["max_abs_diff"]
        worst = max(d for side in diff.values() for d in side.values()) if isinstance(diff, dict) else diff
        lines.append(f"  {fmt}: {entry['folder']} (max abs difference to PyTorch {worst:.2g})")
        for kind, v in entry.get("variants", {}).items():
            acc = f", zero-shot acc1 {v['acc1']:.4f} ({v['acc1_change']:+.4f} vs float32)" if "acc1" in v else ""
            cos = ", ".join(f"{side} {c:.5f}" for side, c in v["cosine"].items())
            lines.append(f"    {kind}: {v['bytes'] / 2**20:.2f} MiB, mean cosine to float32 {cos}{acc}")
    return lines


def run_export(args: argparse.Namespace) -> int:
    """`clipkd export`: check, build, write, check each format against PyTorch, print the summary."""
    source, formats, variants, benchmark = preflight(args)
    manifest = export_student(source, Path(args.out), formats, variants, benchmark)
    print("\n".join(summary(manifest)))
    return 0
