"""A measured model card: the student beside its teacher(s) - parameters, FLOPs, latency in PyTorch and
onnxruntime, exported file sizes - plus the run's evaluation results and, for an ONNX folder of `clipkd export`, its
int8/fp16 variants with their verdicts. ``card.json`` holds every figure, ``card.md`` the tables.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from clipkd.export.measure import count_params, encoder_flops, encoder_latency
from clipkd.models.encoders import ClipEncoder

BATCHES = (1, 32)


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _file_sizes(encoder: ClipEncoder, folder: Path, onnx_dir: Optional[Path] = None) -> tuple[dict[str, int], Path]:
    """Export ``encoder`` into ``folder`` (ONNX, unless ``onnx_dir`` holds its export already, and open_clip's
    layout when it is an open_clip model): the size of each format's weight files, and the ONNX folder, checked
    against ``encoder`` (so a given ``onnx_dir`` must be this model's)."""
    from clipkd.errors import ExportError
    from clipkd.export.onnx_export import IMAGE_FILE, TEXT_FILE, check_onnx, export_onnx
    from clipkd.export.open_clip_hub import WEIGHTS_FILE, write_open_clip

    sizes: dict[str, int] = {}
    try:
        write_open_clip(encoder, folder / "open_clip")
        sizes["open_clip"] = (folder / "open_clip" / WEIGHTS_FILE).stat().st_size
    except ExportError:
        pass  # not an open_clip model (the LiT teacher): no such format
    if onnx_dir is None:
        onnx_dir = folder / "onnx"
        export_onnx(encoder, onnx_dir)
    check_onnx(encoder, onnx_dir)
    sizes["onnx"] = sum((onnx_dir / f).stat().st_size for f in (IMAGE_FILE, TEXT_FILE))
    return sizes, onnx_dir


def profile(role: str, encoder: ClipEncoder, folder: Path, batches: Sequence[int] = BATCHES,
            onnx_dir: Optional[Path] = None, **timing) -> dict:
    """Every figure of one model: parameters, FLOPs, file sizes, latency (PyTorch CPU, onnxruntime CPU; and
    PyTorch CUDA when a GPU is present). ``onnx_dir``: the model's ONNX export when there is one already."""
    from clipkd.export.onnx_encoder import OnnxEncoder
    from clipkd.export.onnx_export import IMAGE_FILE, TEXT_FILE

    sizes, onnx_dir = _file_sizes(encoder, folder, onnx_dir)
    latency = {"pytorch": encoder_latency(encoder, batches, **timing),
               "onnxruntime": encoder_latency(OnnxEncoder(onnx_dir / IMAGE_FILE, onnx_dir / TEXT_FILE, encoder),
                                              batches, **timing)}
    if torch.cuda.is_available():
        latency["pytorch_cuda"] = encoder_latency(encoder.to("cuda"), batches, device="cuda", **timing)
        encoder.to("cpu")
    return {"role": role, "model": str(getattr(encoder, "name", type(encoder).__name__)),
            "params": count_params(encoder), "flops": encoder_flops(encoder), "bytes": sizes, "latency_ms": latency}


def export_variants(onnx_dir: Optional[Path]) -> dict[str, Any]:
    """``{"variants": ..., "variant_bar": ...}``: the int8/fp16 variants `clipkd export` judged for the ONNX folder
    ``onnx_dir`` (figures and verdicts) and their acceptance bar, from the ``export.json`` in it (``--format onnx``)
    or above it (``all``: ``onnx_dir`` is its ``onnx`` folder) that lists ``onnx_dir``'s float32 files at their
    sizes; empty when there is none."""
    from clipkd.export.onnx_export import IMAGE_FILE
    from clipkd.export.variants import MANIFEST

    if onnx_dir is None or not (onnx_dir / IMAGE_FILE).is_file():
        return {}
    size = (onnx_dir / IMAGE_FILE).stat().st_size
    for manifest_file in [onnx_dir / MANIFEST] + ([onnx_dir.parent / MANIFEST] if onnx_dir.name == "onnx" else []):
        try:
            entry = json.loads(manifest_file.read_text(encoding="utf-8"))["formats"]["onnx"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if entry.get("files", {}).get(IMAGE_FILE) == size and entry.get("variants"):
            return {"variants": entry["variants"], "variant_bar": entry.get("bar")}
    return {}


def build_card(source, models: Sequence[tuple[str, ClipEncoder]], results: Sequence[dict] = (),
               batches: Sequence[int] = BATCHES, student_onnx: Optional[Path] = None,
               run_metrics: Optional[dict[str, float]] = None, **timing) -> dict[str, Any]:
    """The card of ``source`` (an :class:`~clipkd.commands.source.ExportSource`): ``models`` are ``(role, encoder)``,
    the student first; ``results`` are result JSONs (``clipkd eval`` layout) shown with the run's own evaluation
    ``run_metrics`` (its ``eval/*`` metrics at the checkpoint's step, as :func:`clipkd.commands.card.run_evaluation`
    reads them; none: no run evaluation on the card);
    ``student_onnx``: the student's ONNX export, when it was exported already (checked against it)."""
    with tempfile.TemporaryDirectory(prefix="clipkd-card-") as tmp:
        profiles = [profile(role, enc, Path(tmp) / str(i), batches, student_onnx if i == 0 else None, **timing)
                    for i, (role, enc) in enumerate(models)]
    cfg = source.config
    return {
        "run": str(source.run_dir.resolve()) if source.run_dir else None,
        "checkpoint": str(source.checkpoint.resolve()),
        "step": source.step, "recipe": cfg.distill.recipe, "weights": cfg.distill.weights,
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "batches": list(batches), "models": profiles, **export_variants(student_onnx),
        "evaluation": {"run": dict(run_metrics or {}),
                       "results": [{"dataset": r.get("dataset"), "model": r.get("model"), "side": r.get("side"),
                                    "metrics": r.get("metrics", {})} for r in results]},
    }
