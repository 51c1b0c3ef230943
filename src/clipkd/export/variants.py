"""Smaller ONNX variants of an export and what they cost: int8 (onnxruntime dynamic quantisation) and fp16.

Each variant is judged against the float32 export by its *drift* (mean cosine between its embeddings and the
float32 ones, per side) and, on a benchmark the user names, by its zero-shot accuracy change. Both are measured
one input at a time (:class:`~clipkd.export.onnx_encoder.DriftRecorder`), so they do not depend on ``--batch-size``.

Each variant then meets an acceptance :class:`Bar` or not. One that does not is *refused*: its files are not
written (the ONNX folder holds only what passed, so nothing downstream can pick up a variant that failed), while
``export.json`` keeps its figures, ``accepted: false`` and the reasons, and ``clipkd export`` exits with status 1.
The same rule as the float32 export's check against PyTorch: nothing is kept that failed its check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from clipkd.export.measure import text_input
from clipkd.export.onnx_encoder import DriftRecorder, OnnxEncoder
from clipkd.export.onnx_export import IMAGE_FILE, TEXT_FILE, probe_images, quiet
from clipkd.files import write_file_atomic
from clipkd.models.encoders import ClipEncoder

MANIFEST = "export.json"
"""The export folder's record: its formats, files and sizes, the variants' figures and verdicts (`clipkd export`)."""

KINDS = ("int8", "fp16")
FP32_OPS = ("LayerNormalization",)  # kept in float32: precision, and onnxruntime 1.32's optimiser crashes on fp16 LN
PROBE_SIZE = 32
MIN_COSINE = 0.99  # mean cosine to float32 per side: an embedding turned by ~8 degrees on average fails
MAX_ACC1_DROP = 1.0  # zero-shot top-1 points a variant may lose against float32


@dataclass(frozen=True)
class Bar:
    """What a variant must keep of the float32 export: a mean cosine of at least ``min_cosine`` on each side and,
    when a zero-shot benchmark was measured, at most ``max_acc1_drop`` points of top-1 lost."""

    min_cosine: float = MIN_COSINE
    max_acc1_drop: float = MAX_ACC1_DROP

    def reasons(self, entry: dict) -> list[str]:
        """Why a variant's manifest entry (``cosine``, optional ``acc1_change`` as a fraction) fails; empty: it
        passes."""
        found = [f"mean {side} cosine {c:.5f} < {self.min_cosine:g}" for side, c in entry["cosine"].items()
                 if not c >= self.min_cosine]  # NaN (an overflowing variant) fails too
        found += [f"no {side} embeddings were compared" for side in ("image", "text") if side not in entry["cosine"]]
        change = entry.get("acc1_change")
        if change is not None and not round(-100 * change, 9) <= self.max_acc1_drop:
            found.append(f"zero-shot acc1 {100 * change:+.2f} points against float32 (at most "
                         f"{self.max_acc1_drop:g} may be lost)")
        return found


def _machine() -> dict[str, str]:
    """Where a variant's figures were measured: the CPU, its instruction set as PyTorch sees it, onnxruntime's
    version (onnxruntime picks its int8/fp16 kernels by CPU, so another CPU can give slightly other figures)."""
    import onnxruntime

    from clipkd.export.card import cpu_name

    return {"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(), "onnxruntime": onnxruntime.__version__}


def variant_file(name: str, kind: str) -> str:
    """``image_encoder.onnx`` -> ``image_encoder.int8.onnx``."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{kind}{dot}{suffix}"


def _int8(src: Path, dst: Path) -> None:
    """Dynamic quantisation with uint8 weights (U8U8): onnxruntime's default int8 weights (U8S8) run through an
    instruction that saturates 16-bit sums on x86 CPUs without VNNI (AVX2, AVX-512F) but not on VNNI ones, so one
    file would compute other embeddings on another CPU; U8U8 sums exactly everywhere (measured on the test student:
    the same drift as U8S8, 0.99995, about 12% slower on a VNNI CPU)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                             op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS))
    onnx.save(model, str(dst))


def write_variant(out: Path, kind: str) -> list[Path]:
    """Write the ``kind`` variant of ``out``'s two encoders beside them; return the files."""
    convert = {"int8": _int8, "fp16": _fp16}[kind]
    written = []
    with quiet():
        for name in (IMAGE_FILE, TEXT_FILE):
            written.append(write_file_atomic(out / variant_file(name, kind),
                                             lambda tmp, src=out / name: convert(src, tmp)))
    return written


def _probe(recorder: DriftRecorder, encoder: ClipEncoder) -> None:
    with torch.no_grad():
        recorder.encode_image(probe_images(encoder, PROBE_SIZE))
        recorder.encode_text(text_input(encoder, PROBE_SIZE))


def assess_variants(out: Path, encoder: ClipEncoder, kinds: Sequence[str], benchmark=None,
                    bar: Bar = Bar()) -> dict[str, dict]:
    """Per variant: ``cosine`` (mean per side), file ``bytes``, and with a zero-shot ``benchmark``
    (:class:`clipkd.eval.runner.Benchmark`) ``acc1`` of the variant and of the float32 export and the change;
    then ``accepted`` and the ``reasons`` it fails ``bar``. Every input runs alone (batch of one).

    Without a benchmark the drift is measured on seeded random images and the probe captions (``on`` says which).
    """
    reference = OnnxEncoder(out / IMAGE_FILE, out / TEXT_FILE, encoder, per_input=True)
    base: Optional[float] = benchmark.evaluate(reference)["acc1"] if benchmark is not None else None
    found = {}
    for kind in kinds:
        files = [out / variant_file(name, kind) for name in (IMAGE_FILE, TEXT_FILE)]
        recorder = DriftRecorder(OnnxEncoder(*files, like=encoder), reference)
        entry: dict = {"files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files)}
        if benchmark is not None:
            entry.update(on=f"benchmark {benchmark.name}", acc1=benchmark.evaluate(recorder)["acc1"],
                         acc1_float32=base)
            entry["acc1_change"] = entry["acc1"] - base
        else:
            _probe(recorder, encoder)
            entry["on"] = f"{PROBE_SIZE} seeded random images and {PROBE_SIZE} probe captions"
        entry["cosine"] = recorder.mean_cosine()
        entry["measured_on"] = _machine()
        entry["reasons"] = bar.reasons(entry)
        entry["accepted"] = not entry["reasons"]
        found[kind] = entry
    return found


def remove_refused(out: Path, found: dict[str, dict]) -> list[str]:
    """Delete the files of every variant in ``found`` that was not accepted (its entry keeps the figures, loses
    ``files``); the names removed."""
    removed = []
    for entry in found.values():
        if not entry["accepted"]:
            for name in entry.pop("files"):
                (out / name).unlink(missing_ok=True)
                removed.append(name)
    return removed
