"""Data: image-text samples with one view per side (student and teacher)."""
