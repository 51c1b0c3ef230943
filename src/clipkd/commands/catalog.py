"""`clipkd losses` and `clipkd models`: what there is to choose from."""

from __future__ import annotations

import argparse


def run_losses(args: argparse.Namespace) -> int:
    """Every loss term's equation, every recipe's weights and the GD weight rule."""
    from clipkd.losses.catalog import EQUATIONS
    from clipkd.losses.recipes import GD_WEIGHT, RECIPES, weights_text

    print("Loss terms (embeddings L2-normalised, y = arange(N), P(.) = projection to the teacher's size):")
    for name, equation in EQUATIONS.items():
        print(f"  {name:<11} {equation}")
    print("\nRecipes (total = sum of weight x term):")
    for r in RECIPES.values():
        weights = weights_text(r.weights, named={"gd": "lambda_GD"})
        mask = f", mask_ratio {r.mask_ratio:g}" if r.mask_ratio else ""
        print(f"  {r.name:<13} {weights}{mask}  - {r.summary}")
    print(f"\nlambda_GD = gd_weight_for(N, D) = {GD_WEIGHT:g} * (N/1024)^2 * (D/512) * ln(N)/ln(1024)  "
          f"({GD_WEIGHT:g} at N=1024, D=512)")
    print("  N = global batch = data.batch_size x optim.accum_steps x processes, D = the teacher's embedding dim;")
    print("  the value used is logged (INFO, clipkd.losses.recipes). Explicit distill.weights are used as given.")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """The model names open_clip and clipkd know, filtered by ``args.filter``; sigmoid models (a logit bias: SigLIP,
    train them with the siglip recipes) marked, and what a model needs from the hub besides weights."""
    from clipkd.models import list_models
    from clipkd.models.open_clip_adapter import has_logit_bias, model_config

    lines = []
    for name in list_models():
        if args.filter is None or args.filter.lower() in name.lower():
            notes = ["sigmoid"] if has_logit_bias(name) else []
            hf_tokenizer = model_config(name).get("text_cfg", {}).get("hf_tokenizer_name")
            if hf_tokenizer:
                notes.append(f"tokenizer from the hub: {hf_tokenizer}")
            lines.append(name + (f"  ({'; '.join(notes)})" if notes else ""))
    print("\n".join(lines))
    return 0
