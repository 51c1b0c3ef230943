"""What an export or a card starts from: a run folder, a checkpoint folder or a checkpoint's student file.

:func:`resolve_source` finds the checkpoint (a run's newest intact one) and its saved config, checked before
anything is built; :func:`load_student` / :func:`load_teachers` build the models from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from clipkd.config import TrainConfig, teacher_fields
from clipkd.errors import ConfigError
from clipkd.models.encoders import ClipEncoder


@dataclass(frozen=True)
class ExportSource:
    """A checkpoint to export: its folder, its run folder (None when it lies outside one) and its config."""

    checkpoint: Path
    run_dir: Path | None
    config: TrainConfig

    @property
    def student_file(self) -> Path:
        from clipkd.engine.checkpoint import STUDENT_FILE

        return self.checkpoint / STUDENT_FILE

    @property
    def step(self) -> int:
        from clipkd.engine.checkpoint import step_of

        try:
            return step_of(self.checkpoint)
        except ValueError:
            return -1


def _checkpoint_of(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, run folder or None) of a run folder, checkpoint folder or student file."""
    from clipkd.engine.checkpoint import STUDENT_FILE, resolve_resume

    if path.is_file():
        if path.name != STUDENT_FILE:
            raise ConfigError(f"{path}: expected a run folder, a checkpoint folder or its {STUDENT_FILE}")
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"{path}: not found (expected a run folder, a checkpoint folder or its {STUDENT_FILE})")
    if (path / STUDENT_FILE).is_file():
        checkpoint = _verified(resolve_resume, str(path), path)
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        return checkpoint, run if run is not None and (run / "config.yaml").is_file() else None
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a clipkd run folder (no config.yaml) nor a checkpoint folder "
                          f"(no {STUDENT_FILE})")
    checkpoint = _verified(resolve_resume, "latest", path)
    if checkpoint is None:
        raise ConfigError(f"{path}: the run has no checkpoint yet (train it first: clipkd train -c "
                          f"{path / 'config.yaml'})")
    return checkpoint, path


def _verified(resolve, which: str, run: Path):
    try:
        return resolve(which, run)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{run}: {exc}") from None


def resolve_source(path: Union[str, Path]) -> ExportSource:
    """The checkpoint behind ``path`` (a run folder: its newest intact checkpoint), with the config it was written
    with. Raises :class:`~clipkd.errors.ConfigError` naming what is missing."""
    from clipkd.config import load_config

    checkpoint, run = _checkpoint_of(Path(path))
    config_file = checkpoint / "config.yaml"
    if not config_file.is_file():
        config_file = run / "config.yaml" if run else config_file
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}") from None
    return ExportSource(checkpoint, run, config)


def load_student(source: ExportSource) -> ClipEncoder:
    """The student encoder with the checkpoint's weights; the distillation heads are left out."""
    from clipkd.models.factory import create_encoder

    s = source.config.student
    return create_encoder(s.model, str(source.student_file), s.image_mean, s.image_std, role="student").eval()


def load_teachers(source: ExportSource) -> list[tuple[str, ClipEncoder]]:
    """``(setting name, encoder)`` of each teacher of the run (``teacher`` or ``teacher.<i>``); none for a
    baseline run."""
    from clipkd.models.factory import create_encoder

    return [(field, create_encoder(t.model, t.pretrained, t.image_mean, t.image_std, role="teacher").eval())
            for field, t in teacher_fields(source.config.teacher)]
