"""MFD speed: student image-tower forward + backward with 75% of the input masked vs unmasked.

Target: for an open_clip ViT student, ``encode_image_masked(images, 0.75, generator)`` + backward takes at most
0.45x the time of ``encode_image(images)`` + backward (the masked tokens are dropped, so the transformer runs
on 1/4 of the patch tokens plus the class token).

Model: ``clipkd-tiny-vit-64`` (64 px, patch 8: 64 patch tokens, 16 kept at r=0.75), random init, train mode.
For contrast the timm CNN student ``clipkd-tiny-mobilenet`` is timed the same way; a CNN has no tokens to drop,
so its masking zeroes pixel patches and no compute saving is expected.

Timing: ``backward()`` of ``embeddings.sum()`` w.r.t. the tower's parameters (images need no grad), gradients
set to None between runs; warm-up runs first, then masked and unmasked runs alternate (A B, B A, ...) and the
medians are compared, so both see the same machine state. Wall-clock ``time.perf_counter``.

Usage: python benchmarks/mfd_speed.py [--batch 128] [--repeats 7] [--warmup 2] [--threads 2] [--skip-cnn]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import OtherLoad, _loadavg  # noqa: E402

from clipkd.models.open_clip_adapter import create_open_clip_encoder  # noqa: E402

TARGET = 0.45
RATIO = 0.75


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(encoder, images: torch.Tensor, masked: bool, gen: torch.Generator) -> float:
    device = images.device
    encoder.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    emb = encoder.encode_image_masked(images, RATIO, gen) if masked else encoder.encode_image(images)
    emb.sum().backward()
    _sync(device)
    return time.perf_counter() - t0


def _seq_lens(encoder, images: torch.Tensor, gen: torch.Generator) -> tuple[int, int]:
    """Sequence length the ViT's transformer receives, unmasked and masked (checks the tokens really drop)."""
    seen = []
    transformer = encoder.model.visual.transformer
    handle = transformer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape[1]))
    try:
        with torch.no_grad():
            encoder.encode_image(images)
            encoder.encode_image_masked(images, RATIO, gen)
    finally:
        handle.remove()
    return seen[0], seen[1]


def bench(name: str, args, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    encoder = create_open_clip_encoder(name, device=device).train()
    # only the image tower is timed; freeze nothing (the text tower simply gets no gradient)
    images = torch.randn(args.batch, 3, *encoder.image_size, device=device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    for _ in range(args.warmup):
        _step(encoder, images, False, gen)
        _step(encoder, images, True, gen)
    times = {False: [], True: []}
    for r in range(args.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for masked in order:
            times[masked].append(_step(encoder, images, masked, gen))
    visual = encoder.model.visual
    info = {"image_size": encoder.image_size, "tower": type(visual).__name__}
    if hasattr(visual, "grid_size"):
        gh, gw = visual.grid_size
        info["tokens"] = gh * gw
        info["seq_len"] = _seq_lens(encoder, images[:2], gen)
    return {"name": name, "full": times[False], "masked": times[True], **info}



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per variant (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per variant first (default 2)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vit", default="clipkd-tiny-vit-64", help="open_clip ViT student (default clipkd-tiny-vit-64)")
    p.add_argument("--cnn", default="clipkd-tiny-mobilenet", help="timm CNN student (default clipkd-tiny-mobilenet)")
    p.add_argument("--skip-cnn", action="store_true", help="do not time the CNN student")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print("MFD speed: image-tower forward + backward, mask ratio 0.75 vs unmasked")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores, "
          f"torch.set_num_threads({args.threads}), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"batch {args.batch}, {args.warmup} warm-up + {args.repeats} timed runs per variant, interleaved; medians")
    print(f"at start: {_loadavg()}")
    print()

    monitor = OtherLoad()
    results = [bench(args.vit, args, device)]
    if not args.skip_cnn:
        results.append(bench(args.cnn, args, device))

    hdr = (f"{'student':<24}{'tower':<20}{'masking':<13}{'unmasked ms':>12}{'masked ms':>11}{'ratio':>8}"
           f"{'min..max ratio':>16}")
    print(hdr)
    print("-" * len(hdr))
    for res in results:
        full, masked = statistics.median(res["full"]), statistics.median(res["masked"])
        pair_ratios = [m / f for m, f in zip(res["masked"], res["full"])]
        kind = "token drop" if "tokens" in res else "pixel zeroing"
        print(f"{res['name']:<24}{res['tower']:<20}{kind:<13}{full * 1e3:>12.1f}{masked * 1e3:>11.1f}"
              f"{masked / full:>8.3f}{min(pair_ratios):>8.3f}..{max(pair_ratios):.3f}")
        res["ratio"] = masked / full
    vit = results[0]
    print()
    if "tokens" in vit:
        keep = vit["tokens"] - int(RATIO * vit["tokens"])
        print(f"{vit['name']}: {vit['image_size'][0]} px, {vit['tokens']} patch tokens + class token; "
              f"masked: {keep} + 1 tokens ({(keep + 1) / (vit['tokens'] + 1):.3f} of the sequence); "
              f"sequence length seen by the transformer: unmasked {vit['seq_len'][0]}, masked {vit['seq_len'][1]}")
    if len(results) > 1:
        print(f"{results[1]['name']}: pixel masking: no compute saving expected (ratio {results[1]['ratio']:.3f})")
    print(f"at end: {_loadavg()}; {monitor.report()}")
    print()
    verdict = "PASS" if vit["ratio"] <= TARGET else "FAIL"
    print(f"{verdict}: ViT masked/unmasked forward+backward time = {vit['ratio']:.3f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
