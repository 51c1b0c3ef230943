"""Cost per training step of every recipe, relative to the baseline, when the teacher is paid once (issue 14).

Side by side in one process, interleaved: one optimizer step of each recipe through the Trainer's own
GlobalBatchStep on the same batch, with the teacher's embeddings stored in the batch (reinforced data: no
teacher forward), AdamW and gradient clipping included, MFD masking its share of the image tokens. The data
pipeline is left out: it is the same for every recipe. Prints the median step time and its ratio to
``baseline``; the recipe card in docs/ablate.md quotes these ratios.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import OtherLoad, interleaved_medians  # noqa: E402

from clipkd.data.batch import DistillBatch
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.runtime.distributed import DistEnv  # noqa: E402
from clipkd.engine.gradcache import GlobalBatchStep  # noqa: E402
from clipkd.engine.optim import clamp_logit_scales, create_optimizer  # noqa: E402
from clipkd.losses.recipes import RECIPES, get_recipe, resolve_weights  # noqa: E402
from clipkd.models import Embeddings, create_open_clip_encoder  # noqa: E402


def stored_batch(student, n: int, dim: int) -> DistillBatch:
    """A batch as reinforced data delivers it: the student's views and the teacher's stored embeddings."""
    images = torch.randn(n, 3, *student.image_size)
    text = student.tokenize([f"a photo of a red square number {i}" for i in range(n)])
    teacher = Embeddings(F.normalize(torch.randn(n, dim), dim=-1), F.normalize(torch.randn(n, dim), dim=-1),
                         torch.tensor(18.5))
    return DistillBatch(images, text, images, text, teacher=teacher)


def seeded_student(student_name: str):
    """The student encoder, built from seed 0 (every variant starts from the same weights)."""
    torch.manual_seed(0)
    return create_open_clip_encoder(student_name)


def recipe_step(name: str, student, batch: DistillBatch, dim: int, fused: Optional[bool] = None):
    """One optimizer step of recipe ``name`` on the encoder ``student`` (its own optimizer), as a callable that
    returns the step's loss; ``fused``: as :func:`create_optimizer` takes it."""
    weights = resolve_weights(name, None, len(batch), dim)
    d = build_distiller(student, None, weights, get_recipe(name).mask_ratio, stored_teacher_dims=[dim])
    d.student.train()
    opt = create_optimizer(d.student, 1e-4, 0.1, (0.9, 0.98), 1e-6, fused=fused)
    grad_step, gen = GlobalBatchStep(d, d.student, DistEnv(), torch.device("cpu")), torch.Generator().manual_seed(0)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = grad_step([batch], gen)["loss"]
        torch.nn.utils.clip_grad_norm_(d.student.parameters(), 1.0)
        opt.step()
        clamp_logit_scales(d.student)
        return float(loss)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--student", default="clipkd-tiny-vit")
    ap.add_argument("--teacher-dim", type=int, default=256, help="the stored teacher embedding size (demo: 256)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = stored_batch(create_open_clip_encoder(args.student), args.batch, args.teacher_dim)
    steps = {name: recipe_step(name, seeded_student(args.student), batch, args.teacher_dim) for name in RECIPES}
    load = OtherLoad()
    med = interleaved_medians(steps, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.student}, "
          f"stored teacher embeddings of size {args.teacher_dim}, {args.repeats} interleaved repeats (median)")
    for name, t in med.items():
        print(f"  {name:<9} {t * 1000:7.1f} ms   x{t / med['baseline']:.2f} of baseline")
    print(load.report())


if __name__ == "__main__":
    main()
