"""The study config of `clipkd ablate`: which runs to train on one base run, and how to judge them.

A study is a base run config (a train YAML) plus *arms*: each listed recipe, each named variant (overrides on top
of the base, e.g. a recipe without its task loss), and each value of each sweep (one override key over a list of
values, on top of one arm). Every arm trains once per seed with the same budget. Runs are judged on two zero-shot
benchmarks of the base config's ``eval.benchmarks``: ``select.val`` (for choosing settings) and ``select.test``
(for reporting), by ``select.metric``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator

from clipkd.config import _Strict, error_lines
from clipkd.errors import ConfigError
from clipkd.suggest import did_you_mean


class Selection(_Strict):
    """The benchmarks (names in the base config's ``eval.benchmarks``) and the metric that judge the runs."""

    val: str = Field(description="benchmark used to choose settings (never the test one)")
    test: str = Field(description="benchmark the table reports")
    metric: str = Field("acc1", description="metric of both benchmarks")


class Sweep(_Strict):
    """One override key over a list of values, on top of arm ``arm`` (a recipe or variant of the study)."""

    arm: str
    key: str = Field(description="dotted config key, e.g. distill.weights.fd")
    values: list[Any] = Field(min_length=1)


class StudyConfig(_Strict):
    base: str = Field(description="the base run config (a `clipkd train` YAML), relative to the study file")
    out: str = Field(description="study folder: runs/, ablation.md, ablation.json, plots")
    runs: Optional[str] = Field(None, description="folder of the run folders (default <out>/runs); studies naming "
                                "the same one share the runs they have in common")
    recipes: list[str] = Field(default_factory=list, description="recipes trained as arms of their own name")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> dotted overrides")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    sweeps: dict[str, Sweep] = Field(default_factory=dict)
    select: Selection
    baseline: str = Field("baseline", description="the arm the gains and gap shares are measured from")
    curve_points: int = Field(8, ge=1, description="evaluations per run (accuracy-versus-steps curves)")

    @field_validator("recipes")
    @classmethod
    def _known_recipes(cls, recipes: list[str]) -> list[str]:
        from clipkd.losses.recipes import RECIPES, unknown_recipe_message

        for name in recipes:
            if name not in RECIPES:
                raise ValueError(unknown_recipe_message(name))
        if len(set(recipes)) != len(recipes):
            raise ValueError("a recipe is listed twice")
        return recipes


@dataclass(frozen=True)
class Arm:
    """One trained setting: its name and its overrides (dotted key -> value) on top of the base config."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def arms(study: StudyConfig) -> list[Arm]:
    """Every arm of the study in order: recipes, variants, then each sweep value."""
    found = [Arm(r, {"distill.recipe": r}) for r in study.recipes]
    found += [Arm(name, dict(ov)) for name, ov in study.variants.items()]
    by_name = {a.name: a for a in found}
    for sweep_name, sweep in study.sweeps.items():
        base = by_name[sweep.arm]
        for value in sweep.values:
            found.append(Arm(sweep_arm_name(sweep_name, value), _swept(base.overrides, sweep.key, value)))
    return found


def _swept(overrides: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """An arm's overrides with ``key`` set; one loss weight on an arm without explicit weights starts from its
    recipe's weights (the weight alone would replace them)."""
    term = weight_term(key)
    if term and "distill.weights" not in overrides:
        from clipkd.losses.recipes import get_recipe

        weights = dict(get_recipe(overrides["distill.recipe"]).weights)
        return {**overrides, "distill.weights": {**weights, term: value}}
    return {**overrides, key: value}


def weight_term(key: str) -> Optional[str]:
    """The loss term of a ``distill.weights.<term>`` key, or None for any other key."""
    return key[len("distill.weights."):] if key.startswith("distill.weights.") else None


def value_label(value: Any) -> str:
    """A sweep value as arm names, tables and plots show it: ``%g`` for a float, a path's last part."""
    if isinstance(value, str) and os.sep in value:
        return Path(value).name
    return format(value, "g") if isinstance(value, float) else str(value)


def sweep_arm_name(sweep: str, value: Any) -> str:
    """The arm of one value of a sweep: ``<sweep>=<value label>``."""
    return f"{sweep}={value_label(value)}"


def _problems(study: StudyConfig) -> list[str]:
    names = [*study.recipes, *study.variants]
    problems = [f"variants.{n}: also the name of a recipe of the study" for n in study.variants if n in study.recipes]
    problems += [f"sweeps.{s}.arm: {_unknown_arm(sw.arm, names)}" for s, sw in study.sweeps.items()
                 if sw.arm not in names]
    arm_overrides = {**{r: {"distill.recipe": r} for r in study.recipes}, **study.variants}
    problems += [f"sweeps.{s}: {why}" for s, sw in study.sweeps.items()
                 if (why := _weight_sweep_problem(sw, arm_overrides.get(sw.arm)))]
    if study.baseline not in names:
        problems.append(f"baseline: {_unknown_arm(study.baseline, names)}")
    if study.select.val == study.select.test:
        problems.append("select.val and select.test name the same benchmark: settings chosen on the test set")
    if not names:
        problems.append("recipes / variants: the study trains nothing")
    return problems


def _unknown_arm(name: str, names: list[str]) -> str:
    """``'x' is not a recipe or variant of the study (did you mean `y`? known: ...)``."""
    hint = did_you_mean(name, names)
    return (f"'{name}' is not a recipe or variant of the study ({hint + ' ' if hint else ''}known: "
            f"{', '.join(names) or 'none'})")


def _error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """:func:`clipkd.config.error_lines` of a study, an unknown field with the nearest study field
    (``select.metirc: unknown field (did you mean `select.metric`?)``)."""
    from clipkd.config_errors import unknown_field

    hints = {".".join(map(str, e["loc"])): unknown_field(StudyConfig, list(e["loc"])) for e in err.errors()
             if e["type"] == "extra_forbidden"}
    return [(f, hints.get(f, m) if m == "unknown field" else m) for f, m in error_lines(err)]


def _weight_sweep_problem(sweep: Sweep, overrides: Optional[dict[str, Any]]) -> Optional[str]:
    """Why a loss-weight sweep cannot be set on its arm, or None: the arm needs explicit weights or a recipe whose
    weights do not depend on the batch (a recipe's GD weight follows the global batch)."""
    term = weight_term(sweep.key)
    if not term or overrides is None or "distill.weights" in overrides:
        return None
    recipe = overrides.get("distill.recipe")
    if recipe is None:
        return (f"{sweep.key} on '{sweep.arm}', which names no recipe and no distill.weights, would replace the "
                f"base recipe's weights with that one term; give the variant distill.recipe or explicit weights, "
                f"e.g. {{distill.weights: {{task: 1.0, fd: 2000.0}}}}")
    from clipkd.losses.recipes import get_recipe

    if "gd" in get_recipe(recipe).weights and term != "gd":
        return (f"{sweep.key} on recipe '{recipe}', whose GD weight follows the global batch: sweep a variant with "
                f"explicit distill.weights")
    return None


def load_study(path: Union[str, Path]) -> StudyConfig:
    """Read and validate a study YAML; ``base`` and ``out`` become absolute (relative to the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(f"{f}: {m}" if f else m for f, m in _error_lines(err))) from None
    problems = _problems(study)
    if not problems:  # two arms of one name would share a run folder
        names = [a.name for a in arms(study)]
        problems += [f"two arms are named '{n}' (sweep values that print alike?)" for n in sorted(set(names))
                     if names.count(n) > 1]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    folder = Path(os.path.abspath(path)).parent
    runs = study.runs and os.path.normpath(folder / study.runs)
    variants = {name: _resolved(ov, folder) for name, ov in study.variants.items()}
    sweeps = {name: sw.model_copy(update={"values": [_resolved({sw.key: v}, folder)[sw.key] for v in sw.values]})
              for name, sw in study.sweeps.items()}
    return study.model_copy(update={"base": os.path.normpath(folder / study.base), "variants": variants,
                                    "sweeps": sweeps, "out": os.path.normpath(folder / study.out), "runs": runs})


def _resolved(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Dotted overrides with their paths (a teacher cache, a checkpoint...) relative to the study file's folder."""
    from clipkd.config_paths import resolve_override

    return {key: resolve_override(key.split("."), value, folder) for key, value in overrides.items()}


def base_raw(study: StudyConfig) -> dict[str, Any]:
    """The base run config as a plain dict, paths absolute (as ``clipkd train`` reads it)."""
    from clipkd.config_paths import resolve_paths

    path = Path(study.base)
    if not path.is_file():
        raise ConfigError(f"base: run config not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return resolve_paths(raw, path.parent)


def benchmark_names(raw: dict[str, Any]) -> list[str]:
    return [b.get("name") for b in raw.get("eval", {}).get("benchmarks", []) if isinstance(b, dict)]


def check_selection(study: StudyConfig, raw: dict[str, Any]) -> Optional[str]:
    """A problem with ``select`` against the base config's benchmarks, or None."""
    names = benchmark_names(raw)
    missing = [b for b in (study.select.val, study.select.test) if b not in names]
    if missing:
        return (f"select: {', '.join(repr(m) for m in missing)} not among the base config's eval.benchmarks "
                f"({', '.join(map(str, names)) or 'none'})")
    return None
