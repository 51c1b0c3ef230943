"""Teacher + student + loss, wired for one distillation step."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from clipkd.data.batch import DistillBatch
from clipkd.embeddings import NEEDS_TEACHER, Embeddings, StudentOutput
from clipkd.losses.combine import DistillLoss
from clipkd.losses.ensemble import per_teacher_terms
from clipkd.models.encoders import ClipEncoder
from clipkd.models.student import DistillStudent
from clipkd.models.teacher import FrozenTeacher, TeacherEnsemble


@dataclass
class Distiller:
    """The objects of a distillation run. ``student`` is the only module that trains.

    ``teacher`` is None when no active loss term needs one (e.g. recipe ``baseline``), and when the teacher's
    embeddings come with the batches (reinforced data, ``DistillBatch.teacher``): nothing builds, moves or runs
    a teacher then.
    """

    teacher: Optional[Union[FrozenTeacher, TeacherEnsemble]]
    student: DistillStudent
    loss: DistillLoss
    mask_ratio: float = 0.0

    @property
    def view_encoders(self) -> tuple[ClipEncoder, Union[ClipEncoder, list[ClipEncoder]]]:
        """The (student, teacher-side) encoders whose preprocessing and tokenizers make a batch's two views
        (an ensemble: the list of its teachers' encoders).

        Without a teacher the student's encoder serves both sides (the teacher view is then the student's).
        """
        student = self.student.encoder
        if self.teacher is None:
            return student, student
        return student, (self.teacher.encoder if isinstance(self.teacher, FrozenTeacher) else self.teacher.encoders)

    def teacher_embeddings(self, batch: DistillBatch) -> Embeddings:
        """The batch's stored teacher embeddings when it carries them (reinforced data), else a teacher forward."""
        if batch.teacher is not None:
            return batch.teacher
        if self.teacher is None:
            raise ValueError("this distiller has no teacher, and the batch carries no stored teacher embeddings")
        batch = batch.rendered()
        return self.teacher(batch.teacher_images, batch.teacher_text)

    def teacher_for(self, batch: DistillBatch) -> Optional[Embeddings]:
        """The teacher's embeddings of ``batch`` when an active term needs them, else None."""
        return self.teacher_embeddings(batch) if self.loss.needs_teacher else None

    def on_device(self, batch: DistillBatch, device: Union[str, torch.device]) -> DistillBatch:
        """A host batch ready for a training step on ``device``: the student's tokens cut on the host to the width
        its training forward runs (no read-back of it from the device), moved, the views made there
        (``data.preprocess: device``)."""
        batch = replace(batch, student_text=self.student.encoder.trimmed_tokens(batch.student_text))
        return batch.to(device, non_blocking=True).rendered()

    def embed(
        self,
        batch: DistillBatch,
        generator: Optional[torch.Generator] = None,
        student: Optional[Callable[..., StudentOutput]] = None,
        teacher: Optional[Embeddings] = None,
    ) -> tuple[StudentOutput, Optional[Embeddings]]:
        """Teacher embeddings (skipped when no active term needs them), then the student's.

        ``student``: what runs the student forward (e.g. its DDP wrapper; default ``self.student``).
        ``teacher``: the teacher's embeddings when already computed for this batch.
        """
        batch = batch.rendered()  # views to be made on the device (data.preprocess: device): made here
        t = teacher if teacher is not None else self.teacher_for(batch)
        s = (student or self.student)(batch.student_images, batch.student_text, t, self.mask_ratio, generator)
        return s, t

    def per_teacher(self, student: StudentOutput, teacher: Optional[Embeddings]) -> dict[str, torch.Tensor]:
        """A teacher ensemble's ``{"<term>/t<i>": value}``: each term that uses the teachers, with teacher i alone
        (:func:`clipkd.losses.ensemble.per_teacher_terms`; detached). Empty for one teacher."""
        return per_teacher_terms(self.loss.ensemble, self.loss.terms, student, teacher)

    def __call__(self, batch: DistillBatch, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """``{"loss": total, <term>: value}`` for one batch; with a teacher ensemble also ``<term>/t<i>``, each
        teacher's own value of the term (:meth:`per_teacher`)."""
        student, teacher = self.embed(batch, generator)
        return {**self.loss(student, teacher), **self.per_teacher(student, teacher)}


def build_distiller(
    student: ClipEncoder,
    teacher: Union[ClipEncoder, Sequence[ClipEncoder], None],
    weights: Mapping[str, float],
    mask_ratio: float = 0.0,
    stored_teacher_dims: Optional[Sequence[int]] = None,
    teacher_weights: Optional[Sequence[float]] = None,
) -> Distiller:
    """Freeze ``teacher`` (or an ensemble: a list of teachers, ``teacher_weights`` summing to 1, default equal),
    wrap ``student`` with exactly the heads the weighted terms need.

    ``teacher`` may be None when no weighted term needs one (e.g. ``{"task": 1}``): the student then trains
    alone and the distiller has no teacher. ``stored_teacher_dims``: no teacher either, the embeddings of teachers
    of these sizes come with every batch (reinforced data).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    teachers = None if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    dims = list(stored_teacher_dims) if stored_teacher_dims is not None else \
        [t.embed_dim for t in teachers] if teachers else None
    ensemble = dims is not None and len(dims) > 1
    loss = DistillLoss(weights, dims if ensemble else None, teacher_weights if ensemble else None)
    if teacher is None and dims is not None:
        return Distiller(None, DistillStudent(student, dims, loss.needs), loss, mask_ratio)
    if teachers is None:
        if loss.needs_teacher:
            users = sorted(n for n, t in loss.terms.items() if NEEDS_TEACHER in t.needs)
            raise ValueError(f"loss term(s) {', '.join(users)} need a teacher, and none was given")
        return Distiller(None, DistillStudent(student, student.embed_dim, loss.needs), loss, mask_ratio)
    frozen = TeacherEnsemble(teachers) if ensemble else \
        teachers[0] if isinstance(teachers[0], FrozenTeacher) else FrozenTeacher(teachers[0])
    return Distiller(frozen, DistillStudent(student, dims, loss.needs), loss, mask_ratio)
