"""The public API and the command line are pinned: a restructuring moves modules, never what users call.

The names and flags below were read off clipkd before the layers were introduced (commit 84940b9), by listing
``__all__`` and every sub-command's argparse actions; the test reads them off the code now.
"""

import argparse
import importlib

import pytest

from clipkd.cli import build_parser

PUBLIC = {
    "clipkd": [
        "ClipEncoder", "DistillBatch", "DistillLoss", "DistillStudent", "Distiller", "FrozenTeacher",
        "PairedViews", "RECIPES", "__version__", "build_distiller", "collate_views", "create_open_clip_encoder",
        "get_recipe",
    ],
    "clipkd.models": [
        "ClipEncoder", "DistillStudent", "Embeddings", "FrozenTeacher", "OpenClipEncoder", "StudentOutput",
        "TextBatch", "create_open_clip_encoder", "list_models", "read_state_dict", "register_config",
    ],
    "clipkd.losses": [
        "DistillLoss", "LossTerm", "RECIPES", "Recipe", "TERMS", "create_term", "gd_weight_for", "get_recipe",
        "register_term", "resolve_weights", "validate_weights",
    ],
}

COMMANDS = {
    "bench-data": [  # added after 84940b9 (issue 25)
        "--batches", "--config", "--help", "--json", "--step-rate", "-c", "-h", "overrides",
    ],
    "losses": [
        "--help", "-h",
    ],
    "models": [
        "--help", "-h", "filter",
    ],
    "train": [
        "--allow-config-change", "--config", "--help", "--nproc", "--overwrite", "--resume", "-c", "-h",
        "overrides",
    ],
    "eval": [
        "--batch-size", "--benchmarks", "--cache-dir", "--caption-key", "--checkpoint", "--classnames", "--device",
        "--diagnostics", "--first-caption-only", "--help", "--image-key", "--label-key", "--model", "--out",
        "--pairs", "--pretrained", "--retrieval", "--root", "--run", "--side", "--split", "--templates",
        "--workers", "--zeroshot", "-h",
    ],
    "reinforce": [
        "--batch-size", "--config", "--dtype", "--help", "--nproc", "--out", "--rows-per-shard", "--verify",
        "--views", "-c", "-h", "overrides",
    ],
    "export": [
        "--batch-size", "--classnames", "--format", "--fp16", "--help", "--max-acc1-drop", "--min-cosine", "--out",
        "--quantize", "--replace", "--templates", "--zeroshot", "-h", "source",
    ],
    "card": [
        "--batch-sizes", "--help", "--no-teacher", "--onnx", "--out", "--repeats", "--results", "-h", "source",
    ],
    "ablate": [
        "--config", "--dry-run", "--help", "--jobs", "--report-only", "-c", "-h", "-j",
    ],
    "report": [
        "--help", "--out", "-h", "results",
    ],
    "demo": [
        "--help", "--out", "--quick", "--seed", "--source", "-h",
    ],
    "smoke": [
        "--batch-size", "--help", "--recipe", "--seed", "--steps", "--student", "--teacher", "-h",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned_and_resolve(module):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == PUBLIC[module]
    for name in PUBLIC[module]:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_every_command_and_flag_is_pinned():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {name: sorted(s for a in sp._actions for s in (a.option_strings or [a.dest]))
             for name, sp in sub.choices.items()}
    assert found == COMMANDS
