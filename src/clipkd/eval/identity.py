"""What a benchmark measures, by content: its images, labels or captions, and its prompts.

The digest does not depend on the benchmark's name, its path or its format: the same images with the same
labels (or captions) and prompts are the same benchmark wherever they live, and a changed image, label, caption,
class name or template is another one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Union

from clipkd.eval.prompts import template_text
from clipkd.eval.runner import Benchmark
from clipkd.identity import data_file_digest, digest_of


def _image_digest(image: Union[Path, bytes]) -> str:
    if isinstance(image, bytes):
        return "sha256:" + hashlib.sha256(image).hexdigest()
    return data_file_digest(image) if image.is_file() else f"missing:{image.name}"


def image_digests(bench: Benchmark) -> list[str]:
    """The content digest of every image of a benchmark, in its order."""
    return [_image_digest(i) for i in bench.data().images]


def benchmark_identity(bench: Benchmark) -> dict[str, Any]:
    """``{"task", "images", "sha256"}`` of a benchmark: the SHA-256 over its images' content digests (in order),
    its labels and class names and templates (zero-shot) or its captions and which image each describes
    (retrieval, with the protocol). Reads the data index (once per :class:`Benchmark`: evaluating it afterwards
    reads nothing again) and every image file (content digests are remembered, :func:`clipkd.identity.
    content_sha256`)."""
    spec, data = bench.spec, bench.data()
    content: dict[str, Any] = {"task": spec.task, "images": image_digests(bench)}
    if spec.task == "zeroshot":
        classnames, templates = bench.prompts()
        content.update(labels=list(data.targets), classnames=list(classnames),
                       templates=[template_text(t) for t in templates])
    else:
        content.update(captions=list(data.captions), text_to_image=data.text_to_image.tolist(),
                       first_caption_only=spec.first_caption_only)
    return {"task": spec.task, "images": len(data.images), "sha256": digest_of(content)}
