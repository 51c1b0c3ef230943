"""Evaluation: zero-shot classification, image-text retrieval, distillation diagnostics, reports."""
