"""The prompts of zero-shot classification: class names and templates from open_clip's ImageNet lists, a file (one
per line) or the data's own names."""

from __future__ import annotations

from typing import Optional

from clipkd.eval.datasets import read_lines


def load_classnames(spec: Optional[str], implied: list[str]) -> list[str]:
    """'imagenet' (open_clip's ImageNet-1k names), a file with one name per line, or the data's own names."""
    if spec is None:
        return implied
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return read_lines(spec)


def load_templates(spec: Optional[str]) -> list:
    """'imagenet' (the 80 CLIP templates), 'imagenet-simple', a file (one per line with '{}'), or just '{}'."""
    if spec is None:
        return ["{}"]
    if spec in ("imagenet", "imagenet-simple"):
        from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES if spec == "imagenet" else SIMPLE_IMAGENET_TEMPLATES)
    templates = read_lines(spec)
    if not templates:
        raise ValueError(f"{spec}: no templates (one per line, '{{}}' for the class name)")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"{spec}: template(s) without a '{{}}' placeholder: {bad[:3]}")
    return [t.replace("{c}", "{}") for t in templates]


def template_text(template) -> str:
    """A template as text with ``{}`` for the class name (open_clip's built-in templates are functions)."""
    return template("{}") if callable(template) else str(template)
