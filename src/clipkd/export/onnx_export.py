"""A CLIP encoder as two ONNX graphs (image and text; dynamic batch; normalised embeddings) plus what a runtime needs
besides: ``preprocess.json`` (resize, crop, mean/std), ``model.json`` (embedding size and the learned logit scale)
and the tokenizer's files.

Graphs come from PyTorch's exporter (``torch.onnx.export(dynamo=True)``); every export is run in onnxruntime at
batch 1 and 8 and compared with PyTorch before it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from clipkd.embeddings import TextBatch
from clipkd.errors import ExportError
from clipkd.models.encoders import ClipEncoder

IMAGE_FILE, TEXT_FILE, PREPROCESS_FILE = "image_encoder.onnx", "text_encoder.onnx", "preprocess.json"
MODEL_FILE = "model.json"
IMAGE_INPUT, IMAGE_OUTPUT, TEXT_OUTPUT = "image", "image_embeds", "text_embeds"
MAX_DIFF = 1e-4  # float32 onnxruntime against PyTorch eager
CHECK_BATCHES = (1, 8)
PROBE_CAPTIONS = (
    "a photo of a dog", "Ein Hund läuft über die Wiese – schnell!", "一只猫坐在窗台上", "naïve café crème brûlée 🍰",
    "a very long caption " + "that keeps going and going " * 12, "", "T-shirt/top", "Ankle boot",
)


class _ImageTower(nn.Module):
    def __init__(self, encoder: ClipEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(image, normalize=True)


class _TextIds(nn.Module):
    """The text tower of a tokenizer that gives one id tensor (open_clip's)."""

    def __init__(self, encoder: ClipEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_text(text, normalize=True)


class _TextMasked(_TextIds):
    """The text tower of a tokenizer that gives ids and an attention mask (transformers')."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.encoder.encode_text({"input_ids": input_ids, "attention_mask": attention_mask}, normalize=True)


def text_feed(encoder: ClipEncoder, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """The text tower's inputs for ``captions``, by ONNX input name: ``text``, or ``input_ids``/``attention_mask``."""
    tokens = encoder.tokenize(captions)
    if isinstance(tokens, torch.Tensor):
        return {"text": tokens}
    if not isinstance(tokens, Mapping) or {"input_ids", "attention_mask"} - set(tokens):
        raise ExportError(f"the tokenizer of {_name(encoder)} returns {type(tokens).__name__}; the exporter takes "
                          "an id tensor or a mapping with input_ids and attention_mask")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def _name(encoder: ClipEncoder) -> str:
    return str(getattr(encoder, "name", type(encoder).__name__))


def tower_name(encoder: ClipEncoder, side: str) -> str:
    """How messages name a tower: ``the image tower of clipkd-EfficientNet-B0 (timm efficientnet_b0)``."""
    what = f"the {side} tower of {_name(encoder)}"
    try:
        from clipkd.models.open_clip_adapter import model_config

        cfg = model_config(_name(encoder)).get("vision_cfg" if side == "image" else "text_cfg", {})
    except (ValueError, ImportError):
        return what
    inner = cfg.get("timm_model_name") or cfg.get("hf_model_name")
    return f"{what} ({'timm' if side == 'image' else 'transformers'} {inner})" if inner else what


def _first_line(exc: BaseException) -> str:
    """The line saying what went wrong: the exporter's exception summary (the cause's), else the first line."""
    import re

    for cause in (exc.__cause__, exc):
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause or ""))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if "## Exception summary" in lines[:-1]:
            return lines[lines.index("## Exception summary") + 1][:400]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter, its graph optimiser and the converters warn per traced guard, failed constant fold or truncated
    constant, through Python warnings and the root and onnxscript loggers: held back (their errors still raise)."""
    loggers = [logging.getLogger(), logging.getLogger("onnxscript"), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path, what: str) -> Path:
    """Trace ``module`` with a dynamic batch dimension into the single ONNX file ``path``."""
    from clipkd.files import write_file_atomic

    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in inputs)

    def write(tmp: Path) -> None:
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(tmp), dynamo=True, external_data=False,
                          input_names=list(inputs), output_names=[output], dynamic_shapes=dynamic, optimize=True,
                          verbose=False)

    try:
        with quiet():
            return write_file_atomic(path, write)
    except Exception as exc:  # the exporter raises many kinds; the user needs the tower and the first line
        raise ExportError(f"cannot trace {what} for ONNX ({_first_line(exc)})") from exc


def probe_images(encoder: ClipEncoder, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random preprocessed images at the encoder's resolution."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *encoder.image_size, generator=g)


def probe_captions(n: int) -> list[str]:
    """``n`` captions cycling through :data:`PROBE_CAPTIONS` (non-ASCII, over-long and empty ones included)."""
    return [PROBE_CAPTIONS[i % len(PROBE_CAPTIONS)] for i in range(n)]


def model_info(encoder: ClipEncoder) -> dict:
    """What a runtime needs to turn the two encoders' outputs into the model's logits: the embedding size, the
    learned ``logit_scale`` as the multiplier ``exp(logit_scale)`` clamped to 100 (:meth:`ClipEncoder.scale`) and,
    for a sigmoid model (SigLIP), its ``logit_bias``; ``logits`` says how they combine."""
    info = {"embed_dim": int(encoder.embed_dim), "logit_scale": float(encoder.scale().detach()),
            "logits": "logit_scale * image_embeds @ text_embeds.T (the embeddings are L2-normalised); a softmax "
                      "over the captions gives CLIP's probabilities"}
    if encoder.bias() is not None:
        info["logit_bias"] = float(encoder.bias().detach())
        info["logits"] = ("logit_scale * image_embeds @ text_embeds.T + logit_bias (the embeddings are "
                          "L2-normalised); a sigmoid of each logit gives the probability that the pair matches "
                          "(a sigmoid model, SigLIP: no softmax over the captions)")
    return info


def write_model_info(encoder: ClipEncoder, path: Path) -> Path:
    """Write :func:`model_info` as JSON; return ``path``."""
    from clipkd.files import write_json

    write_json(path, model_info(encoder))
    return path


def export_onnx(encoder: ClipEncoder, out: Path) -> list[Path]:
    """Write ``image_encoder.onnx``, ``text_encoder.onnx``, ``preprocess.json``, ``model.json`` and the tokenizer
    files into ``out``; return the files. Raises :class:`ExportError` naming a tower that cannot be traced."""
    from clipkd.export.preprocess import write_preprocess
    from clipkd.export.tokenizer_files import write_tokenizer_files

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        image = _export(_ImageTower(inference_form(encoder)), {IMAGE_INPUT: probe_images(encoder, 2)}, IMAGE_OUTPUT,
                        out / IMAGE_FILE, tower_name(encoder, "image"))
        feed = text_feed(encoder, probe_captions(2))
        tower = _TextIds(encoder) if list(feed) == ["text"] else _TextMasked(encoder)
        text = _export(tower, feed, TEXT_OUTPUT, out / TEXT_FILE,
                       tower_name(encoder, "text"))
    return [image, text, write_preprocess(encoder, out / PREPROCESS_FILE), write_model_info(encoder, out / MODEL_FILE),
            *write_tokenizer_files(encoder.tokenizer, out)]


def inference_form(encoder: ClipEncoder) -> ClipEncoder:
    """The encoder as it is deployed: a re-parameterisable image tower (MobileOne / FastViT blocks, as in
    MobileCLIP; RepVGG) with its training-time branches fused into single convolutions by timm's
    ``reparameterize_model``, on a copy (same function, fewer kernels); any other encoder itself. The ONNX check
    compares the result with the unfused student."""
    visual = getattr(getattr(encoder, "model", None), "visual", None)
    if visual is None or not any(hasattr(m, "reparameterize") for m in visual.modules()):
        return encoder
    import copy

    from timm.utils.model import reparameterize_model

    fused = copy.deepcopy(encoder).eval()
    fused.model.visual = reparameterize_model(fused.model.visual, inplace=True)  # the copy's: not copied again
    return fused


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads; default: as many as torch uses)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, feed: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Run an encoder session on torch inputs; the embeddings as a float32 torch tensor."""
    names = [i.name for i in sess.get_inputs()]
    out = sess.run(None, {k: np.ascontiguousarray(feed[k].numpy()) for k in names})[0]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def check_onnx(encoder: ClipEncoder, out: Path, batches: Sequence[int] = CHECK_BATCHES,
               limit: float = MAX_DIFF) -> dict[str, dict[int, float]]:
    """Max abs difference between onnxruntime and PyTorch per tower and batch size; raises above ``limit``."""
    image_sess, text_sess = session(out / IMAGE_FILE), session(out / TEXT_FILE)
    diffs: dict[str, dict[int, float]] = {"image": {}, "text": {}}
    with torch.no_grad():
        for n in batches:
            images, feed = probe_images(encoder, n, seed=n), text_feed(encoder, probe_captions(n))
            ref_image, ref_text = encoder.encode_image(images), encoder.encode_text(as_text_batch(feed))
            try:
                got_image, got_text = run_session(image_sess, {IMAGE_INPUT: images}), run_session(text_sess, feed)
            except Exception as exc:  # onnxruntime's own error types: wrong input names, shapes or types
                raise ExportError(f"{out}: the ONNX encoders are not {_name(encoder)}'s: they do not take its "
                                  f"inputs ({_first_line(exc)})") from None
            if got_image.shape != ref_image.shape or got_text.shape != ref_text.shape:
                raise ExportError(f"{out}: the ONNX encoders are not {_name(encoder)}'s: their embeddings have "
                                  f"another size ({got_image.shape[-1]}, not {ref_image.shape[-1]})")
            diffs["image"][n] = float((got_image - ref_image).abs().max())
            diffs["text"][n] = float((got_text - ref_text).abs().max())
    worst = max((d, side, n) for side, by_n in diffs.items() for n, d in by_n.items())
    if worst[0] > limit:
        raise ExportError(f"{out}: the ONNX {worst[1]} encoder differs from PyTorch by {worst[0]:.3g} at batch "
                          f"{worst[2]} (limit {limit:g})")
    return diffs


def as_text_batch(feed: dict[str, torch.Tensor]) -> TextBatch:
    """A :func:`text_feed` as the encoder takes it: the id tensor, or the mapping."""
    return feed["text"] if list(feed) == ["text"] else dict(feed)
