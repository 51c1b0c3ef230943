"""What `clipkd eval` evaluates: an open_clip model, a checkpoint or a clipkd run (its student or teacher),
checked before anything is built, and loaded; a model hub that cannot be reached is one clear line."""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clipkd.commands.eval.args import DEFAULTS
from clipkd.commands.eval.specs import LOCAL_WEIGHTS, one_line
from clipkd.config import TrainConfig
from clipkd.errors import ConfigError, HubUnreachable


def one_teacher(cfg, run: str, flag: str) -> None:
    """Refuse a run whose teacher is an ensemble: ``flag`` compares with one teacher."""
    if isinstance(cfg.teacher, list):
        raise ConfigError(f"{flag}: run {run} distils an ensemble of {len(cfg.teacher)} teachers; evaluate each "
                          "with --model NAME --pretrained WEIGHTS")


def run_config(run: str) -> TrainConfig:
    """The saved config of a run folder, or a one-line error saying why it cannot be used."""
    from clipkd.config import load_config

    folder = Path(run)
    if not folder.is_dir():
        raise ConfigError(f"--run: folder not found: {run}")
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"--run {run}: not a clipkd run folder (no config.yaml)")
    try:
        return load_config(folder / "config.yaml")
    except ConfigError as exc:
        raise ConfigError(f"--run {run}: config.yaml: {one_line(exc)}") from None


def run_checkpoint(run: str, explicit: Optional[str]) -> Path:
    from clipkd.engine.checkpoint import resolve_resume

    try:
        path = resolve_resume(explicit or "latest", run)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"--checkpoint: {one_line(exc)}") from None
    if path is None:
        raise ConfigError(f"--run {run}: no checkpoint in {Path(run) / 'checkpoints'} (train first, or "
                          "evaluate its teacher with --side teacher)")
    return path


@dataclass
class Target:
    """The model to evaluate: its name, weights (pretrained tag or checkpoint file) and, for a run, its side."""

    model: str
    pretrained: Optional[str]
    side: Optional[str]
    source: str  # how messages name it: ``--model X --pretrained Y``, ``--run R --side teacher``
    weights_option: str  # where the user sets the weights: ``--pretrained``, ``teacher.pretrained``


def _looks_like_file(value: str) -> bool:
    from clipkd.config_paths import WEIGHT_SUFFIXES

    return "/" in value or os.sep in value or value.lower().endswith(WEIGHT_SUFFIXES)


def check_model_args(args: argparse.Namespace) -> Target:
    """The model to evaluate exists and its weights fit it, checked without building it."""
    from clipkd.build.checks import check_model

    if args.model:
        problems = check_model("--model", args.model, args.pretrained, "--pretrained")
        if problems and args.pretrained and _looks_like_file(args.pretrained) and not Path(args.pretrained).is_file():
            problems.append(f"--pretrained: checkpoint file not found: {args.pretrained}")  # also for a bad --model
        problems = [p + " (e.g. /path/to/weights.safetensors, or a .pt/.bin file)"
                    if p.startswith("--pretrained:") and "unreachable" in p else p for p in problems]
        if problems:
            raise ConfigError("; ".join(dict.fromkeys(problems)))
        source = f"--model {args.model}" + (f" --pretrained {args.pretrained}" if args.pretrained else "")
        return Target(args.model, args.pretrained, None, source, "--pretrained")
    cfg = run_config(args.run)
    side = args.side or DEFAULTS["side"]
    if side == "teacher":
        if cfg.teacher is None:
            raise ConfigError(f"--side teacher: run {args.run} has no teacher (distill.recipe baseline trains the "
                              "student alone)")
        one_teacher(cfg, args.run, "--side teacher")
        problems = check_model("teacher.model", cfg.teacher.model, cfg.teacher.pretrained, "teacher.pretrained")
        target = Target(cfg.teacher.model, cfg.teacher.pretrained, side, f"--run {args.run} --side teacher",
                        f"teacher.pretrained in {Path(args.run) / 'config.yaml'}")
    else:
        weights = str(run_checkpoint(args.run, args.checkpoint) / "student.safetensors")
        problems = check_model("student.model", cfg.student.model, weights, "checkpoint")
        target = Target(cfg.student.model, weights, side, f"--run {args.run}", "--checkpoint")
    if problems:
        raise ConfigError(f"--run {args.run}: " + "; ".join(problems))
    return target


def _download_message(target: Target, failure: HubUnreachable) -> str:
    from clipkd.models.shapes import hub_offline

    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
    if target.model.startswith("hf-hub:"):
        instead = ("pass a local model config and checkpoint instead: --model /path/to/open_clip_config.json "
                   "--pretrained /path/to/weights.safetensors (or .pt/.bin)")
    elif target.weights_option == "--pretrained":
        instead = f"pass a local checkpoint file instead: {LOCAL_WEIGHTS}"
    else:
        instead = f"set {target.weights_option} to a local checkpoint file (.safetensors, .pt or .bin)"
    what = ("the model's config and weights" if target.model.startswith("hf-hub:") else
            f"the pretrained weights '{target.pretrained}'" if target.pretrained else "the model's weights")
    return (f"{target.source}: cannot download {what}: the model hub is unreachable ({why}) and they are not in "
            f"the local cache; download them once with network access, or {instead}")


@contextmanager
def model_download_errors(target: Target):
    """Model creation inside: :class:`~clipkd.errors.HubUnreachable` (raised by model creation when a download
    fails) becomes one clean line naming this command's flags and how to use a local checkpoint instead."""
    try:
        yield
    except HubUnreachable as exc:
        raise ConfigError(_download_message(target, exc)) from None


def load_encoder(args: argparse.Namespace, target: Optional[Target] = None):
    """The encoder to evaluate, and its (model, pretrained) labels."""
    from clipkd.build.models import build_encoder
    from clipkd.models.factory import create_encoder
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    target = target or check_model_args(args)
    with model_download_errors(target):
        if args.model:
            return create_encoder(args.model, args.pretrained), args.model, args.pretrained
        cfg = run_config(args.run)
        if target.side == "teacher":
            return build_encoder(cfg.teacher), cfg.teacher.model, cfg.teacher.pretrained
        return create_open_clip_encoder(cfg.student.model, target.pretrained), cfg.student.model, target.pretrained
