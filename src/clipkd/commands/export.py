"""`clipkd export`: a run's student as an open_clip hub folder and/or ONNX encoders, each checked against PyTorch."""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

from clipkd.errors import ConfigError

FORMATS = ("open_clip", "onnx", "all")
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
    p.add_argument("--min-cosine", type=float, default=None, metavar="C",
                   help="acceptance bar of --quantize/--fp16: a variant whose mean cosine to the float32 embeddings "
                   "(each image and caption run alone) is below C on either side is refused: not written, "
                   "export.json says why, exit status 1 (default: 0.99)")
    p.add_argument("--max-acc1-drop", type=float, default=None, metavar="POINTS",
                   help="acceptance bar with --zeroshot: a variant losing more than POINTS of zero-shot top-1 "
                   "(percentage points) against float32 is refused (default: 1.0)")
    p.add_argument("--replace", action="store_true",
                   help="--out may hold files: move them aside to OUT.replaced-<time> first (default: a folder "
                   "that is not empty is refused, so two exports never mix)")


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
    from clipkd.commands.eval.specs import prepared_benchmarks

    spec_args = argparse.Namespace(
        zeroshot=[args.zeroshot], retrieval=[], benchmarks=None, root=None, batch_size=args.batch_size, workers=0,
        classnames=args.classnames, templates=args.templates, image_key=None, label_key=None, caption_key=None,
        split=None, first_caption_only=None)
    return prepared_benchmarks(spec_args)[0]


def _bar(args: argparse.Namespace, variants: list[str]):
    """The acceptance bar of the variants (:class:`~clipkd.export.variants.Bar`) from its flags, checked."""
    from clipkd.export.variants import Bar

    given = {"--min-cosine": args.min_cosine, "--max-acc1-drop": args.max_acc1_drop}
    for flag, value in given.items():
        if value is not None and not variants:
            raise ConfigError(f"{flag} is the acceptance bar of --quantize int8 / --fp16: give one of them")
    if args.max_acc1_drop is not None and not args.zeroshot:
        raise ConfigError("--max-acc1-drop judges the zero-shot accuracy change: give --zeroshot FORMAT:PATH")
    if args.min_cosine is not None and not -1 <= args.min_cosine <= 1:
        raise ConfigError(f"--min-cosine: a cosine lies in [-1, 1], got {args.min_cosine}")
    if args.max_acc1_drop is not None and not 0 <= args.max_acc1_drop <= 100:
        raise ConfigError(f"--max-acc1-drop: percentage points in [0, 100], got {args.max_acc1_drop}")
    return Bar(**{k: v for k, v in (("min_cosine", args.min_cosine), ("max_acc1_drop", args.max_acc1_drop))
                  if v is not None})


def _held(out: Path) -> list[str]:
    """What ``out`` holds, but the staging leftovers of a killed export (the next export removes those)."""
    from clipkd.files import TMP_PREFIX

    return sorted(p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX)) if out.is_dir() else []


def _check_out(out: Path, replace: bool) -> None:
    """Refuse a file, and a folder that holds anything unless ``replace``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    held = _held(out)
    if held and not replace:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ConfigError(f"--out: {out} is not empty ({shown}); an export there would mix with what it holds. "
                          f"Pass --replace to move it aside to {out.name}.replaced-<time>, or choose another folder")


def preflight(args: argparse.Namespace):
    """Every flag checked before a model is built: ``(source, formats, variants, benchmark, bar)``."""
    from clipkd.commands.source import resolve_source

    formats, variants = _formats(args.format), _variants(args)
    if variants and "onnx" not in formats:
        raise ConfigError(f"--quantize/--fp16 make smaller ONNX encoders: use them with --format onnx or all, not "
                          f"{args.format}")
    if args.zeroshot and not variants:
        raise ConfigError("--zeroshot measures the accuracy change of --quantize int8 / --fp16: give one of them")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    bar = _bar(args, variants)
    _check_out(Path(args.out), args.replace)
    missing = _missing_packages(formats, variants)
    if missing:
        raise ConfigError(f"exporting needs {', '.join(missing)}: pip install 'clipkd[export]'")
    source = resolve_source(args.source)
    _check_not_source(Path(args.out), source.checkpoint)
    return source, formats, variants, _benchmark(args), bar


def _check_not_source(out: Path, checkpoint: Path) -> None:
    """Refuse an ``--out`` that is, or holds, the checkpoint exported from (``--replace`` would move the run
    aside, writing would mix the export into it)."""
    out, src = out.resolve(), checkpoint.resolve()
    if out == src or out in src.parents:
        raise ConfigError(f"--out: {out} holds the checkpoint being exported ({src}); export into a folder of its own")


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


def export_onnx_folder(encoder, folder: Path, variants: list[str], benchmark=None, bar=None) -> dict[str, Any]:
    """Write and check the ONNX folder (and its variants, judged by ``bar``: default
    :class:`~clipkd.export.variants.Bar`; a refused variant's files are removed); its manifest entry."""
    from dataclasses import asdict

    from clipkd.export.onnx_export import check_onnx, export_onnx
    from clipkd.export.variants import Bar, assess_variants, remove_refused, write_variant

    files = export_onnx(encoder, folder)
    entry: dict[str, Any] = {"files": _sizes(files), "max_abs_diff": check_onnx(encoder, folder)}
    for kind in variants:
        entry["files"].update(_sizes(write_variant(folder, kind)))
    if variants:
        bar = bar or Bar()
        entry["bar"] = asdict(bar)
        entry["variants"] = assess_variants(folder, encoder, variants, benchmark, bar)
        for name in remove_refused(folder, entry["variants"]):
            entry["files"].pop(name)
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


def export_student(source, out: Path, formats: list[str], variants: list[str], benchmark=None,
                   bar=None) -> dict[str, Any]:
    """Build the student of ``source`` and write each format (variants judged by ``bar``, default
    :class:`~clipkd.export.variants.Bar`); the manifest (also written as ``out/export.json``)."""
    from clipkd.commands.source import load_student
    from clipkd.export.variants import MANIFEST
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
                        export_onnx_folder(encoder, tmp, variants, benchmark, bar), folder)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        manifest["formats"][fmt] = entry
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, manifest)
    return manifest


def refused(manifest: dict[str, Any]) -> list[str]:
    """The variants that failed their acceptance bar (and were not written)."""
    return [kind for entry in manifest["formats"].values() for kind, v in entry.get("variants", {}).items()
            if not v.get("accepted", True)]


def _variant_line(kind: str, v: dict[str, Any]) -> str:
    acc = f", zero-shot acc1 {100 * v['acc1']:.2f}% ({100 * v['acc1_change']:+.2f} points vs float32)" \
        if "acc1" in v else ""
    cos = ", ".join(f"{side} {c:.5f}" for side, c in v["cosine"].items())
    verdict = "accepted" if v["accepted"] else "REFUSED (not written): " + "; ".join(v["reasons"])
    return f"    {kind}: {verdict}; {v['bytes'] / 2**20:.2f} MiB, mean cosine to float32 {cos}{acc}"


def summary(manifest: dict[str, Any]) -> list[str]:
    """Lines for the terminal: each format's folder and check, each variant's verdict, drift and accuracy change."""
    lines = [f"exported {manifest['student']} from {manifest['source']} (left out {len(manifest['left_out'])} "
             "distillation-only tensors)"]
    for fmt, entry in manifest["formats"].items():
        diff = entry["max_abs_diff"]
        worst = max(d for side in diff.values() for d in side.values()) if isinstance(diff, dict) else diff
        lines.append(f"  {fmt}: {entry['folder']} (max abs difference to PyTorch {worst:.2g})")
        if "bar" in entry:
            lines.append(f"    acceptance bar: mean cosine >= {entry['bar']['min_cosine']:g} per side"
                         + (f", zero-shot acc1 at most {entry['bar']['max_acc1_drop']:g} percentage point(s) "
                            "below float32"
                            if any("acc1" in v for v in entry["variants"].values()) else ""))
        lines += [_variant_line(kind, v) for kind, v in entry.get("variants", {}).items()]
    return lines


def run_export(args: argparse.Namespace) -> int:
    """`clipkd export`: check, build, write, check each format against PyTorch, print the summary. Exit status 1
    when a variant failed its acceptance bar (the rest is written)."""
    source, formats, variants, benchmark, bar = preflight(args)
    out = Path(args.out)
    if args.replace and _held(out):
        from clipkd.files import move_folder_aside

        print(f"moved the earlier contents of {out} to {move_folder_aside(out)}")
    manifest = export_student(source, out, formats, variants, benchmark, bar)
    print("\n".join(summary(manifest)))
    return 1 if refused(manifest) else 0
