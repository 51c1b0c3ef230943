"""Loss overhead: the ``clipkd`` recipe's loss terms as a fraction of a whole training step.

Target: all terms of the ``clipkd`` recipe (task + CRD + ICL + FD) together, forward + backward, cost at most
3% of a training step of a tiny student at batch 256.

Setup: ``build_distiller(student, teacher, get_recipe("clipkd").weights)`` with student ``clipkd-tiny-vit``
(embed dim 256, 32 px) and teacher ``clipkd-tiny-teacher`` (embed dim 384, 48 px), so the student has image/text
projection heads (256 -> 384) and an ICL scale. Random init, seeded. One batch of 256 random images per side
(each at its own ``encoder.image_size``) and 256 random captions tokenised by each side's own tokenizer,
prepared once, outside the timings.

(a) training step: teacher forward (no grad) + student forward + ``DistillLoss`` + backward + ``AdamW.step``.
(b) loss only: ``DistillLoss`` forward + backward on detached copies of that batch's embeddings, the student's
    as leaf tensors requiring grad (``img``, ``txt``, ``scale``, ``img_proj``, ``txt_proj``, ``icl_scale``, as
    in ``StudentOutput``), the teacher's plain.
Per term: each term alone (weighted), forward + backward on the same leaves.

(b) and the per-term figures are the mean of ``--inner`` back-to-back runs per sample (they take a few ms).
All measurements are interleaved (the order rotates every repeat) after warm-up; medians are reported.

Usage: python benchmarks/loss_overhead.py [--batch 256] [--repeats 9] [--warmup 2] [--inner 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import OtherLoad, _loadavg  # noqa: E402

from clipkd.data.batch import DistillBatch
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.losses.recipes import get_recipe  # noqa: E402
from clipkd.embeddings import Embeddings  # noqa: E402
from clipkd.models.open_clip_adapter import create_open_clip_encoder  # noqa: E402
from clipkd.embeddings import StudentOutput  # noqa: E402

TARGET = 0.03
WORDS = ("a photo of the small large red blue green yellow dark bright round square circle triangle star cat dog "
         "bird car tree house on in with next to above below and two three many").split()


def random_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]


def _leaf(x):
    return None if x is None else x.detach().clone().requires_grad_(True)



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--repeats", type=int, default=9, help="timed samples per measurement (default 9)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--inner", type=int, default=10, help="back-to-back loss runs averaged per sample (default 10)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch.set_num_threads")
    p.add_argument("--student", default="clipkd-tiny-vit")
    p.add_argument("--teacher", default="clipkd-tiny-teacher")
    p.add_argument("--recipe", default="clipkd")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = _loadavg()

    recipe = get_recipe(args.recipe)
    student = create_open_clip_encoder(args.student)
    teacher = create_open_clip_encoder(args.teacher)
    distiller = build_distiller(student, teacher, recipe.weights, recipe.mask_ratio)
    distiller.student.train()
    opt = torch.optim.AdamW(distiller.student.parameters(), lr=1e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)

    captions = random_captions(args.batch, args.seed)
    batch = DistillBatch(
        student_images=torch.randn(args.batch, 3, *student.image_size, generator=gen),
        student_text=student.tokenize(captions),
        teacher_images=torch.randn(args.batch, 3, *teacher.image_size, generator=gen),
        teacher_text=teacher.tokenize(captions),
    )

    # leaves for the loss-only measurement: same shapes/values as a real step's embeddings
    with torch.no_grad():
        s_out, t_out = distiller.embed(batch, gen)
    s_leaf = StudentOutput(
        img=_leaf(s_out.img), txt=_leaf(s_out.txt), scale=_leaf(s_out.scale),
        img_proj=_leaf(s_out.img_proj), txt_proj=_leaf(s_out.txt_proj), icl_scale=_leaf(s_out.icl_scale),
        afd_img=_leaf(s_out.afd_img), afd_txt=_leaf(s_out.afd_txt), afd_scale=_leaf(s_out.afd_scale),
    )
    t_emb = Embeddings(t_out.img.detach(), t_out.txt.detach(), t_out.scale.detach())
    leaves = [t for t in vars(s_leaf).values() if isinstance(t, torch.Tensor)]

    def train_step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = distiller(batch, gen)
        out["loss"].backward()
        opt.step()
        return time.perf_counter() - t0

    def loss_only(term: str | None = None) -> float:
        t0 = time.perf_counter()
        for _ in range(args.inner):
            for t in leaves:
                t.grad = None
            if term is None:
                loss = distiller.loss(s_leaf, t_emb)["loss"]
            else:
                loss = distiller.loss.weights[term] * distiller.loss.terms[term](s_leaf, t_emb)
            loss.backward()
        return (time.perf_counter() - t0) / args.inner

    terms = list(distiller.loss.terms)
    jobs = {"step": train_step, "loss": loss_only, **{f"term:{n}": (lambda n=n: loss_only(n)) for n in terms}}
    names = list(jobs)
    monitor = OtherLoad()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            dt = jobs[n]()
            if r >= args.warmup:
                times[n].append(dt)
    med = {n: statistics.median(v) for n, v in times.items()}
    other = monitor.report()

    n_params = sum(p.numel() for p in distiller.student.parameters())
    print(f"Loss overhead of the '{args.recipe}' recipe in a training step")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores, "
          f"torch.set_num_threads({args.threads}), device cpu")
    print(f"student {args.student} (dim {student.embed_dim}, {student.image_size[0]} px, "
          f"{n_params / 1e6:.2f} M trainable params incl. heads), teacher {args.teacher} (dim {teacher.embed_dim}, "
          f"{teacher.image_size[0]} px); batch {args.batch}")
    print(f"weights {distiller.loss.weights}; student heads: proj {distiller.student.proj_img is not None}, "
          f"icl scale {distiller.student.icl_logit_scale is not None}")
    print(f"{args.warmup} warm-up rounds + {args.repeats} timed, interleaved; loss figures = mean of "
          f"{args.inner} runs per sample; medians")
    print(f"at start: {load_start}; at end: {_loadavg()}")
    print(other)
    print()
    hdr = f"{'measurement':<54}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'of step':>10}"
    print(hdr)
    print("-" * len(hdr))
    labels = {"step": "(a) training step (teacher+student+loss+bwd+AdamW)", "loss": "(b) all loss terms, fwd+bwd"}
    for n in names:
        label = labels.get(n, f"    {n[5:]} alone (x{distiller.loss.weights.get(n[5:], 0):g}), fwd+bwd")
        print(f"{label:<54}{med[n] * 1e3:>11.2f}{min(times[n]) * 1e3:>9.2f}{max(times[n]) * 1e3:>9.2f}"
              f"{med[n] / med['step'] * 100:>9.2f}%")
    sum_terms = sum(med[f"term:{n}"] for n in terms)
    print(f"{'    sum of the terms alone':<54}{sum_terms * 1e3:>11.2f}{'':>18}{sum_terms / med['step'] * 100:>9.2f}%")
    print()
    ratio = med["loss"] / med["step"]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"{verdict}: loss terms / training step = {ratio:.4f} ({ratio * 100:.2f}%; target <= {TARGET})")


if __name__ == "__main__":
    main()
