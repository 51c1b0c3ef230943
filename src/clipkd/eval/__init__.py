"""Evaluation (a library layer below build): zero-shot classification, image-text retrieval, the held-out loss and
distillation diagnostics, benchmark identity, reports. Imports data, distill, models and config, nothing above."""
