"""The `clipkd` console entry point."""

import math
import subprocess
import sys

from clipkd.cli import main
from clipkd.losses import RECIPES, TERMS
from clipkd.commands.smoke import run_smoke


def test_losses_lists_every_term_and_recipe(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name, term in TERMS.items():
        assert term.equation in out
    for name in RECIPES:
        assert f"  {name} " in out
    assert "2000*fd" in out and "mask_ratio 0.75" in out


def test_models_filter(capsys):
    assert main(["models", "clipkd-tiny"]) == 0
    lines = set(capsys.readouterr().out.splitlines())
    assert lines == {"clipkd-tiny-mobilenet", "clipkd-tiny-teacher", "clipkd-tiny-vit", "clipkd-tiny-vit-64",
                     "clipkd-tiny-siglip  (sigmoid)", "clipkd-tiny-effnetlite0"}


def test_models_marks_sigmoid_models_and_hub_tokenizers(capsys):
    assert main(["models", "ViT-B-16-SigLIP2"]) == 0
    assert "ViT-B-16-SigLIP2  (sigmoid; tokenizer from the hub: timm/ViT-B-16-SigLIP2)" in capsys.readouterr().out


def test_bad_recipe_is_a_clear_error(capsys):
    assert main(["smoke", "--recipe", "nope", "--steps", "1"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_smoke_run_learns():
    history = run_smoke("clipkd", steps=12, teacher_steps=5, batch_size=16, log=None)
    assert len(history) == 12 and all(math.isfinite(h["loss"]) for h in history)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] and last["fd"] < first["fd"]


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "clipkd", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("clipkd ")
