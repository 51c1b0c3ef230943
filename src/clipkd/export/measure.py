"""What a deployed encoder costs: parameters per tower, FLOPs per image and per caption (PyTorch's FLOP counter),
and latency per batch (median wall time, after warm-up) in PyTorch or onnxruntime."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

from clipkd.embeddings import TextBatch
from clipkd.export.onnx_export import as_text_batch, probe_captions, probe_images, text_feed
from clipkd.models.encoders import ClipEncoder

IMAGE_PREFIXES = ("visual.", "image_tower.", "image_head.")  # open_clip models; clipkd's composite encoders
SCALE_NAMES = ("logit_scale", "logit_bias")


def _parameters(encoder: ClipEncoder) -> dict[str, torch.nn.Parameter]:
    module = getattr(encoder, "model", encoder)
    return dict(module.named_parameters())


def count_params(encoder: ClipEncoder) -> dict[str, int]:
    """Parameters of the image tower, the text tower (everything else but the logit scale/bias) and in total."""
    params = _parameters(encoder)
    image = sum(p.numel() for k, p in params.items() if k.startswith(IMAGE_PREFIXES))
    scales = sum(p.numel() for k, p in params.items() if k in SCALE_NAMES)
    total = sum(p.numel() for p in params.values())
    return {"image": image, "text": total - image - scales, "total": total}


def text_input(encoder: ClipEncoder, n: int) -> TextBatch:
    """``n`` tokenised probe captions as the encoder takes them."""
    return as_text_batch(text_feed(encoder, probe_captions(n)))


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls, convolutions, attention: PyTorch's counter).

    PyTorch's counter has no formula for the CPU kernel of ``scaled_dot_product_attention`` (it would count the
    attention's two batched matmuls as zero on CPU): that kernel gets the formula of the GPU kernels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_attention: _cpu_attention_flops} if cpu_attention is not None else {}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def encoder_flops(encoder: ClipEncoder) -> dict[str, int]:
    """FLOPs per image and per caption (batch of one)."""
    images, text = probe_images(encoder, 1), text_input(encoder, 1)
    return {"image": count_flops(lambda: encoder.encode_image(images)),
            "text": count_flops(lambda: encoder.encode_text(text))}


def latency_ms(fn: Callable[[], object], warmup: int = 2, repeats: int = 10, budget_s: float = 5.0,
               sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn`` in milliseconds over up to ``repeats`` timed calls after ``warmup`` untimed ones
    (fewer, but at least 3, when they would take longer than ``budget_s``)."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def encoder_latency(encoder: ClipEncoder, batches: Sequence[int], device: str = "cpu", **timing) -> dict:
    """``{"image": {b: ms}, "text": {b: ms}}`` of ``encoder`` (PyTorch or :class:`OnnxEncoder`) per batch size."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    found: dict[str, dict[int, float]] = {"image": {}, "text": {}}
    with torch.no_grad():
        for b in batches:
            images = probe_images(encoder, b).to(dev)
            text = _to(text_input(encoder, b), dev)
            found["image"][b] = latency_ms(lambda: encoder.encode_image(images), sync=sync, **timing)
            found["text"][b] = latency_ms(lambda: encoder.encode_text(text), sync=sync, **timing)
    return found


def _to(text: TextBatch, device: torch.device) -> TextBatch:
    return text.to(device) if isinstance(text, torch.Tensor) else {k: v.to(device) for k, v in text.items()}
