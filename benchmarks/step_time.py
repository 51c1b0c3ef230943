"""Distillation step time vs. its unavoidable parts (issue: training engine).

Measures, side by side and interleaved, on the tiny models at batch 128:
  A. one `clipkd`-recipe training step (teacher forward + student forward + all terms + backward + AdamW),
     through the Trainer's own GlobalBatchStep (split at the embeddings; one process, K=1);
  B. a student-only CLIP step (student forward + CLIP loss + backward + AdamW), and
  C. a teacher forward (no grad).
Target: median(A) / (median(B) + median(C)) <= 1.05.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import interleaved_medians  # noqa: E402

from clipkd.data.batch import DistillBatch
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.runtime.distributed import DistEnv  # noqa: E402
from clipkd.engine.gradcache import GlobalBatchStep  # noqa: E402
from clipkd.engine.optim import clamp_logit_scales, create_optimizer  # noqa: E402
from clipkd.losses.functional import clip_loss  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402


def make_batch(student, teacher, n: int) -> DistillBatch:
    captions = [f"a photo of a red square number {i}" for i in range(n)]
    return DistillBatch(torch.randn(n, 3, *student.image_size), student.tokenize(captions),
                        torch.randn(n, 3, *teacher.image_size), teacher.tokenize(captions))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--student", default="clipkd-tiny-vit")
    ap.add_argument("--teacher", default="clipkd-tiny-teacher")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher, student = create_open_clip_encoder(args.teacher), create_open_clip_encoder(args.student)
    d = build_distiller(student, teacher, {"task": 1, "crd": 1, "icl": 1, "fd": 2000})
    batch = make_batch(student, teacher, args.batch)
    opt = create_optimizer(d.student, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    d.student.train()

    grad_step = GlobalBatchStep(d, d.student, DistEnv(), torch.device("cpu"))

    def distill_step():
        opt.zero_grad(set_to_none=True)
        grad_step([batch])
        torch.nn.utils.clip_grad_norm_(d.student.parameters(), 1.0)
        opt.step()
        clamp_logit_scales(d.student)

    def student_step():
        enc = d.student.encoder
        loss = clip_loss(enc.encode_image(batch.student_images), enc.encode_text(batch.student_text), enc.scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(d.student.parameters(), 1.0)
        opt.step()
        clamp_logit_scales(d.student)

    def teacher_forward():
        d.teacher(batch.teacher_images, batch.teacher_text)

    fns = {"A distill step": distill_step, "B student CLIP step": student_step, "C teacher forward": teacher_forward}
    med = interleaved_medians(fns, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.student} <- {args.teacher}, {args.repeats} interleaved repeats (median)")
    for k, v in med.items():
        print(f"  {k:<22} {v * 1000:8.1f} ms")
    ratio = med["A distill step"] / (med["B student CLIP step"] + med["C teacher forward"])
    print(f"ratio A / (B + C) = {ratio:.3f}  (target <= 1.05): {'PASS' if ratio <= 1.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
