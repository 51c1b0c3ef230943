"""`clipkd` answers --help, `losses`, argument errors and config errors without importing torch & co.

Each command runs in a fresh interpreter (`python -m clipkd ...`, through runpy) that then reports which heavy
modules it loaded. Only imports are checked here; wall times are measured by ``benchmarks/startup.py``.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "timm", "torchvision", "matplotlib", "tensorboard", "webdataset", "PIL.Image")

PROBE = f"""
import json, runpy, sys
out, sys.argv = sys.argv[1], ["clipkd", *sys.argv[2:]]
try:
    runpy.run_module("clipkd", run_name="__main__", alter_sys=True)
    rc = 0
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open(out, "w") as f:
    json.dump({{"rc": rc, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}, f)
"""

COMMANDS = ["losses", "models", "train", "eval", "report", "demo", "smoke"]


def run_clipkd(tmp_path, *argv: str) -> tuple[int, list[str], str, str]:
    """(exit status, heavy modules loaded, stdout, stderr) of ``python -m clipkd *argv`` in a fresh process."""
    result = tmp_path / "probe.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(result), *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert result.is_file(), f"probe did not finish: {proc.stderr[-2000:]}"
    report = json.loads(result.read_text())
    return report["rc"], report["heavy"], proc.stdout, proc.stderr


def test_top_level_help(tmp_path):
    rc, heavy, out, _ = run_clipkd(tmp_path, "--help")
    assert rc == 0 and heavy == []
    assert out.startswith("usage: clipkd") and all(c in out for c in COMMANDS)


def test_version(tmp_path):
    rc, heavy, out, _ = run_clipkd(tmp_path, "--version")
    assert rc == 0 and heavy == [] and out.startswith("clipkd ")


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(tmp_path, command):
    rc, heavy, out, _ = run_clipkd(tmp_path, command, "--help")
    assert rc == 0 and heavy == []
    assert out.startswith(f"usage: clipkd {command}")


def test_losses_prints_the_table_without_torch(tmp_path):
    from clipkd.losses import RECIPES, TERMS

    rc, heavy, out, _ = run_clipkd(tmp_path, "losses")
    assert rc == 0 and heavy == []
    for name, term in TERMS.items():
        assert f"  {name:<11} {term.equation}\n" in out
    for name in RECIPES:
        assert f"  {name} " in out
    assert "lambda_GD = gd_weight_for(N, D) = 5e+06" in out


@pytest.mark.parametrize("argv, message", [
    (["trian"], "invalid choice: 'trian'"),
    (["train", "--nproc", "0"], "argument --nproc: must be >= 1, got 0"),
    (["train", "--nproc", "two"], "argument --nproc: must be an integer >= 1, got 'two'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["smoke", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["eval", "--out", "x"], "one of the arguments --model --run is required"),
    (["report"], "the following arguments are required: results"),
])
def test_argument_errors(tmp_path, argv, message):
    rc, heavy, _, err = run_clipkd(tmp_path, *argv)
    assert rc == 2 and heavy == []
    assert message in err


def test_config_errors_come_before_torch(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "run_dir: runs/x\nteacher: {model: ViT-B-32}\nstudent: {model: clipkd-tiny-vit}\n"
        "data: {format: csv, train: data.csv, batch_size: 0}\noptim: {lrr: 1.0e-3, steps: 10}\n"
        "distill: {recipe: clipdk}\n")
    rc, heavy, _, err = run_clipkd(tmp_path, "train", "-c", "bad.yaml", "distill.weights={task: 1, fdd: 2}")
    assert rc == 2 and heavy == []
    assert "invalid config:" in err
    assert "optim.lrr: unknown field (did you mean `optim.lr`?)" in err
    assert "data.batch_size: Input should be greater than 0" in err
    assert "distill.recipe: unknown recipe 'clipdk' (did you mean `clipkd`?" in err
    assert "distill.weights: unknown loss term(s) ['fdd'] (did you mean `fd`?" in err


def test_missing_config_file_comes_before_torch(tmp_path):
    rc, heavy, _, err = run_clipkd(tmp_path, "train", "-c", "nope.yaml")
    assert rc == 2 and heavy == []
    assert "config file not found: nope.yaml" in err


def test_public_api_loads_on_first_use(tmp_path):
    """``import clipkd`` (and the config and recipe modules) load no torch; the public names still resolve."""
    code = f"""
import sys
import clipkd, clipkd.config, clipkd.losses, clipkd.losses.recipes, clipkd.losses.catalog
assert isinstance(clipkd.__version__, str)
before = sorted(m for m in {HEAVY!r} if m in sys.modules)
from clipkd import (build_distiller, create_open_clip_encoder, get_recipe, DistillBatch, RECIPES, DistillLoss,
                    ClipEncoder, DistillStudent, FrozenTeacher, Distiller, __version__)
from clipkd.losses import TERMS, LossTerm, validate_weights, resolve_weights
import clipkd.distill, clipkd.models
assert build_distiller is clipkd.distill.build_distiller and ClipEncoder is clipkd.models.ClipEncoder
assert DistillLoss is clipkd.losses.DistillLoss and RECIPES is clipkd.losses.recipes.RECIPES
assert set(clipkd.__all__) <= set(dir(clipkd)) and set(clipkd.losses.__all__) <= set(dir(clipkd.losses))
try:
    clipkd.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("clipkd.no_such_name resolved")
print(before, "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]", "True"]


def test_catalog_and_registry_name_the_same_terms():
    """One source of truth: every registered term takes its equation from the catalog, and vice versa."""
    from clipkd.losses import terms
    from clipkd.losses.catalog import EQUATIONS

    assert list(terms.TERMS) == list(EQUATIONS)
    for name, cls in terms.TERMS.items():
        assert cls.equation == EQUATIONS[name], name
    assert not re.search(r"^\s+equation\s*=", inspect.getsource(terms), re.M), "terms.py writes an equation itself"


def test_a_term_defined_elsewhere_brings_its_equation(monkeypatch):
    from clipkd.losses import catalog, terms
    from clipkd.losses.catalog import validate_weights

    monkeypatch.setattr(catalog, "EQUATIONS", dict(catalog.EQUATIONS))
    monkeypatch.setattr(terms, "TERMS", dict(terms.TERMS))

    @terms.register_term
    class Zero(terms.LossTerm):
        name = "zero"
        equation = "0"

        def compute(self, s, t):
            return s.scale * 0

    assert catalog.EQUATIONS["zero"] == "0" and validate_weights({"zero": 1.0}) == {"zero": 1.0}
    with pytest.raises(ValueError, match="has no equation"):
        terms.register_term(type("Nameless", (terms.LossTerm,), {"name": "nameless"}))


def _help(command, capsys, monkeypatch):
    from clipkd.cli import main

    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside a default
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command, shown", [
    ("train", ["--nproc NPROC processes", "(default: 1)"]),
    ("eval", ["--out OUT", "(default: eval_results)", "--batch-size BATCH_SIZE", "(default: 256)", "(default: auto)"]),
    ("report", ["(default: .)"]),
    ("demo", ["(default: runs/demo)", "--seed SEED random seed (default: 0)"]),
    ("smoke", ["(default: clipkd)", "(default: clipkd-tiny-vit)", "(default: clipkd-tiny-teacher)",
               "--steps STEPS distillation steps (default: 30)", "(default: 32)"]),
    ("models", []),
    ("losses", []),
])
def test_help_shows_defaults(command, shown, capsys, monkeypatch):
    text = _help(command, capsys, monkeypatch)
    for piece in shown:
        assert piece in text, piece
    for silly in ("(default: None)", "(default: False)", "(default: [])", "(default: ==SUPPRESS==)"):
        assert silly not in text


def test_help_formatter_shows_only_defaults_worth_showing(monkeypatch):
    import argparse

    from clipkd.cli import _HelpFormatter

    monkeypatch.setenv("COLUMNS", "300")
    p = argparse.ArgumentParser(prog="x", formatter_class=_HelpFormatter)
    p.add_argument("--size", type=int, default=7)  # no help text: argparse alone would print nothing
    p.add_argument("--zero", type=int, default=0, help="zero")
    p.add_argument("--name", default="a", help="name (default: the first)")  # says its default itself
    p.add_argument("--path", help="a path")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--item", action="append", default=[], help="repeatable")
    p.add_argument("rest", nargs="*", help="the rest")
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in p.format_help().splitlines()
             if line.startswith("  -") or line.startswith("  rest")}
    assert lines["--size"] == "SIZE (default: 7)" and lines["--zero"] == "ZERO zero (default: 0)"
    assert lines["--name"] == "NAME name (default: the first)"
    assert lines["--path"] == "PATH a path" and lines["--flag"] == "a switch"
    assert lines["--item"] == "ITEM repeatable" and lines["rest"] == "the rest"
