"""Ablation studies: every recipe x seed (and sweeps) on one base run, judged on val, reported on test."""
