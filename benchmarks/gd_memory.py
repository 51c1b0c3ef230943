"""GD loss: extra peak memory over the task loss.

Target: ``gd_loss`` forward + backward (w.r.t. the student embeddings) at N=1024, D=512, float32 needs at most
64 MiB more peak memory than ``clip_loss`` forward + backward on the same inputs.

CPU method: every measurement runs in a fresh Python process (this script re-invoked with ``--child``), so one
variant's allocations can never hide or inflate another's. Each child imports the same modules, builds the same
seeded inputs, runs its variant once (forward + ``backward()``) and reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's resident-set high-water mark. The ``inputs`` child
stops after building the inputs; every other variant is reported as its peak minus the median ``inputs`` peak,
and the target compares ``gd`` with ``task``. Children of all variants are interleaved (A B C D, B C D A, ...)
and medians are taken. As a cross-check each child also resets the kernel's high-water mark after building
its inputs (``/proc/self/clear_refs`` = 5) and reports ``VmHWM`` growth during the variant alone.

For contrast, ``naive`` is an official-CLIP-KD-style GD that builds the key-side gradient through N x D x N
tensors (``(P - I)^T`` repeated D times, times the broadcast other-modality embeddings, summed): 2 GiB per such
tensor at N=1024, D=512. It computes the same loss value and gradients as ``gd_loss`` (checked at start).

With CUDA available the same variants are also measured on the GPU (in one child process) from
``torch.cuda.max_memory_allocated`` minus the memory allocated before the variant.

Usage: python benchmarks/gd_memory.py [--n 1024] [--d 512] [--repeats 3] [--naive-repeats 1] [--skip-naive]
       [--skip-cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from _common import _loadavg

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# torch and clipkd are imported only inside the child processes. The parent must stay small: on Linux a child's
# ru_maxrss starts at the peak RSS of the memory map it was exec'ed from (exec folds the old map's high-water
# mark into signal->maxrss; with vfork, which subprocess uses, that old map is the parent's). A parent holding
# torch (~0.7 GiB resident) would put a floor under every child and hide the small variants completely.

TARGET_MIB = 64.0
S_SCALE = 1 / 0.07  # student logit-scale multiplier at initialisation
T_SCALE = 100.0  # a trained teacher's multiplier (the clamp maximum)
MEMORY_VARIANTS = ("inputs", "task", "gd", "naive")

# glibc malloc and RSS. RSS counts resident pages, not live bytes, so the allocator decides what it shows. By
# default glibc serves blocks >= M_MMAP_THRESHOLD (128 KiB, but raised *dynamically*, up to 32 MiB, whenever an
# mmapped block is freed) with a private mmap that is unmapped on free; smaller blocks come from the brk heap or
# per-thread arenas, where freed memory stays resident and is reused or not depending on fragmentation (which
# can inflate a peak, or hide a later allocation in a freed slab). Setting the threshold explicitly (64 KiB)
# also turns the dynamic raise off, so every tensor-sized block (the N x N and N x D buffers here are 2-4 MiB)
# gets its own mmap and leaves RSS the moment it is freed: the RSS high-water mark then follows the live-bytes
# high-water mark. MALLOC_ARENA_MAX=2 bounds the arenas the intra-op worker threads would otherwise create and
# keep resident. Every child, the inputs-only baseline included, runs with the same environment.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "131072"}


# ----------------------------------------------------------------------------------------------------------
# child side (imports torch)
# ----------------------------------------------------------------------------------------------------------


def make_inputs(n: int, d: int, seed: int, device: str = "cpu", dtype=None):
    """Student embeddings (leaves with grad) and teacher embeddings of aligned pairs, all L2-normalised."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(n, d, generator=g), dim=1)
    t_img = F.normalize(base + 0.5 * torch.randn(n, d, generator=g) / d**0.5, dim=1)
    t_txt = F.normalize(base + 0.5 * torch.randn(n, d, generator=g) / d**0.5, dim=1)
    s_img = F.normalize(torch.randn(n, d, generator=g), dim=1)
    s_txt = F.normalize(torch.randn(n, d, generator=g), dim=1)
    out = [x.to(device=device, dtype=dtype or torch.float32) for x in (s_img, s_txt, t_img, t_txt)]
    out[0].requires_grad_(True)
    out[1].requires_grad_(True)
    return out


def _naive_grads(anchor, key, scale: float):
    """Gradients of CE(s * anchor @ key^T, y) w.r.t. anchor and key; the key side through N x D x N tensors.

    Same structure as the official CLIP-KD code (minus its temperature bug: here ``scale`` multiplies).
    """
    import torch

    n, d = anchor.shape
    eye = torch.eye(n, dtype=anchor.dtype, device=anchor.device)
    p_minus_i = torch.softmax(scale * anchor @ key.T, dim=1) - eye
    g_anchor = scale / n * p_minus_i @ key
    repeated = p_minus_i.T.repeat(1, d).view(n, d, n)  # [j, d, i] = (P - I)[i, j] for every d
    g_key = (repeated * (scale * anchor.T).unsqueeze(0)).sum(-1) / n  # a second N x D x N product, reduced
    return g_anchor, g_key


def naive_gd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale):
    """Same value as ``gd_loss`` (G1..G4 in the same order), computed the memory-hungry way."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t1, t2 = _naive_grads(t_img.detach(), t_txt.detach(), t_scale)
        t3, t4 = _naive_grads(t_txt.detach(), t_img.detach(), t_scale)
    s1, s2 = _naive_grads(s_img, s_txt, s_scale)
    s3, s4 = _naive_grads(s_txt, s_img, s_scale)
    return sum(F.mse_loss(a, b) for a, b in zip((s1, s2, s3, s4), (t1, t2, t3, t4)))


def run_variant(variant: str, s_img, s_txt, t_img, t_txt) -> float:
    """Forward + backward of one variant; returns the loss value (0 for the inputs-only baseline)."""
    from clipkd.losses.functional import clip_loss, gd_loss

    if variant == "inputs":
        return 0.0
    if variant == "task":
        loss = clip_loss(s_img, s_txt, S_SCALE)
    elif variant == "gd":
        loss = gd_loss(s_img, s_txt, S_SCALE, t_img, t_txt, T_SCALE)
    elif variant == "naive":
        loss = naive_gd_loss(s_img, s_txt, S_SCALE, t_img, t_txt, T_SCALE)
    else:
        raise ValueError(variant)
    loss.backward()
    return float(loss.detach())


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child_memory(args) -> dict:
    import torch

    import clipkd.losses.functional  # noqa: F401  (same imports in every child, baseline included)

    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.n, args.d, args.seed)
    rss_inputs = _maxrss_kib()
    reset = _reset_hwm()
    rss_at_reset = _proc_status_kib("VmRSS")
    t0 = time.perf_counter()
    value = run_variant(args.child, *inputs)
    seconds = time.perf_counter() - t0
    hwm_delta = _proc_status_kib("VmHWM") - rss_at_reset if reset else None
    return {"variant": args.child, "rss_inputs_kib": rss_inputs, "rss_peak_kib": _maxrss_kib(),
            "hwm_delta_kib": hwm_delta, "seconds": seconds, "loss": value}


def child_info(args) -> dict:
    """Versions, CUDA availability and the naive-vs-gd_loss agreement check (float64, small sizes)."""
    import torch

    from clipkd.losses.functional import gd_loss

    a = make_inputs(64, 32, 1, dtype=torch.float64)
    b = [x.detach().clone().requires_grad_(x.requires_grad) for x in a]
    la = gd_loss(a[0], a[1], S_SCALE, a[2], a[3], T_SCALE)
    lb = naive_gd_loss(b[0], b[1], S_SCALE, b[2], b[3], T_SCALE)
    la.backward()
    lb.backward()
    rel = max(float((la - lb).abs() / la.abs()),
              *(float((x.grad - y.grad).abs().max() / x.grad.abs().max()) for x, y in ((a[0], b[0]), (a[1], b[1]))))
    return {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "naive_rel_diff": rel,
            "default_threads": torch.get_num_threads()}


def child_tracker(args) -> dict:
    """Allocator-independent cross-check: peak live tensor bytes (MiB) of task and gd from torch's MemTracker.

    ``torch.distributed._tools.mem_tracker`` is a private API; any failure is reported, not raised.
    """
    import torch

    torch.set_num_threads(args.threads)
    try:
        from torch.distributed._tools.mem_tracker import MemTracker

        out = {}
        for v in ("task", "gd"):
            inputs = make_inputs(args.n, args.d, args.seed)
            tracker = MemTracker()
            with tracker:
                run_variant(v, *inputs)
            out[v] = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] / 2**20
        return {"ok": True, "peak_mib": out}
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}


def child_cuda(args) -> dict:
    """Extra peak GPU memory (MiB) of each variant over its inputs, from the caching allocator's statistics."""
    import torch

    variants = list(args.variants.split(","))
    res: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats + 1):  # round 0 is a warm-up (cuBLAS workspace, kernels), not recorded
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            torch.cuda.empty_cache()
            inputs = make_inputs(args.n, args.d, args.seed, device="cuda")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_variant(v, *inputs)
            torch.cuda.synchronize()
            if r > 0:
                res[v].append((torch.cuda.max_memory_allocated() - base) / 2**20)
            del inputs
    return {"device": torch.cuda.get_device_name(), "extra_mib": res}


# ----------------------------------------------------------------------------------------------------------
# parent side (stdlib only)
# ----------------------------------------------------------------------------------------------------------


def spawn(child: str, args, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", child, "--n", str(args.n), "--d", str(args.d),
           "--threads", str(args.threads), "--seed", str(args.seed), "--repeats", str(args.repeats), *extra]
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV}
    if not args.default_malloc:
        env.update(CHILD_ENV)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child '{child}' failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024, help="batch size N (default 1024)")
    p.add_argument("--d", type=int, default=512, help="embedding size D (default 512)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per variant (default 3)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per child")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive-repeats", type=int, default=1,
                   help="fresh processes for the slow N x D x N reference (default 1; ~40 s each on 2 cores)")
    p.add_argument("--skip-naive", action="store_true", help="skip the N x D x N reference (2 GiB per tensor)")
    p.add_argument("--skip-cuda", action="store_true", help="skip the GPU measurement even if CUDA is available")
    p.add_argument("--default-malloc", action="store_true",
                   help="run the children with glibc's default malloc settings instead of CHILD_ENV (comparison)")
    p.add_argument("--skip-tracker", action="store_true", help="skip the MemTracker live-tensor cross-check")
    p.add_argument("--child", choices=(*MEMORY_VARIANTS, "info", "cuda", "tracker"), help=argparse.SUPPRESS)
    p.add_argument("--variants", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = {"info": child_info, "cuda": child_cuda, "tracker": child_tracker}.get(args.child, child_memory)
        print(json.dumps(fn(args)))
        return

    variants = [v for v in MEMORY_VARIANTS if not (args.skip_naive and v == "naive")]
    info = spawn("info", args)
    print("GD loss extra peak memory (forward + backward w.r.t. the student embeddings)")
    print(f"torch {info['torch']}, python {platform.python_version()}, {os.cpu_count()} CPU cores, "
          f"torch.set_num_threads({args.threads}) in each child, CUDA available: {info['cuda']}")
    print(f"N={args.n}, D={args.d}, float32, student scale {S_SCALE:.3f}, teacher scale {T_SCALE:g}; "
          f"{args.repeats} fresh processes per variant ({args.naive_repeats} for naive), interleaved; medians")
    print(f"at start: {_loadavg()} (memory figures do not depend on it)")
    print("child malloc env: " + ("glibc defaults (--default-malloc)" if args.default_malloc
                                  else " ".join(f"{k}={v}" for k, v in CHILD_ENV.items())))
    if "naive" in variants:
        print(f"naive reference vs gd_loss (float64, N=64, D=32): max rel. diff of loss and grads "
              f"{info['naive_rel_diff']:.1e}")
    print(f"sizes: N x D x N float32 {args.n * args.d * args.n * 4 / 2**20:.0f} MiB, "
          f"N x N {args.n * args.n * 4 / 2**20:.1f} MiB, N x D {args.n * args.d * 4 / 2**20:.1f} MiB")
    print()

    rows: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(max(args.repeats, args.naive_repeats)):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            if r >= (args.naive_repeats if v == "naive" else args.repeats):
                continue
            rows[v].append(spawn(v, args))
            print(f"  round {r + 1}  {v:<6} ru_maxrss {rows[v][-1]['rss_peak_kib'] / 1024:8.1f} MiB",
                  flush=True)
    print()

    med = statistics.median
    base = med([x["rss_peak_kib"] for x in rows["inputs"]]) / 1024
    peak = {v: med([x["rss_peak_kib"] for x in rows[v]]) / 1024 for v in variants}
    spread = {v: (max(x["rss_peak_kib"] for x in rows[v]) - min(x["rss_peak_kib"] for x in rows[v])) / 1024
              for v in variants}
    hwm = {v: (med([x["hwm_delta_kib"] for x in rows[v]]) / 1024 if rows[v][0]["hwm_delta_kib"] is not None
               else float("nan")) for v in variants}
    secs = {v: med([x["seconds"] for x in rows[v]]) for v in variants}
    hdr = (f"{'variant':<8}{'ru_maxrss MiB':>15}{'delta vs inputs MiB':>21}{'spread MiB':>12}"
           f"{'VmHWM growth MiB':>18}{'time s':>9}")
    print("CPU: ru_maxrss of a fresh process per run (median); delta = variant - inputs-only baseline process")
    print(hdr)
    print("-" * len(hdr))
    for v in variants:
        print(f"{v:<8}{peak[v]:>15.1f}{peak[v] - base:>21.1f}{spread[v]:>12.1f}{hwm[v]:>18.1f}{secs[v]:>9.3f}")
    print("(spread = max - min over the repeats; VmHWM growth = in-process cross-check, high-water mark reset "
          "after the inputs were built)")
    print()
    extra = peak["gd"] - peak["task"]
    print(f"gd - task    (extra peak of GD over the task loss): {extra:8.1f} MiB   (target <= {TARGET_MIB:g} MiB)")
    if "naive" in variants:
        n_extra = peak["naive"] - peak["task"]
        print(f"naive - task (N x D x N reference)               : {n_extra:8.1f} MiB   "
              f"({n_extra / 1024:.2f} GiB)")
    if not args.skip_tracker:
        tr = spawn("tracker", args)
        if tr["ok"]:
            t_pk = tr["peak_mib"]
            print(f"cross-check, peak live tensor bytes (torch MemTracker, one process): task {t_pk['task']:.1f} MiB, "
                  f"gd {t_pk['gd']:.1f} MiB, gd - task {t_pk['gd'] - t_pk['task']:.1f} MiB")
        else:
            print(f"cross-check with torch MemTracker unavailable: {tr['error']}")

    if info["cuda"] and not args.skip_cuda:
        print()
        cres = spawn("cuda", args, ("--variants", ",".join(variants)))
        cmed = {v: med(cres["extra_mib"][v]) for v in variants}
        print(f"CUDA ({cres['device']}): max_memory_allocated - memory_allocated before the variant (median)")
        print(f"{'variant':<8}{'extra peak MiB':>16}")
        for v in variants:
            print(f"{v:<8}{cmed[v]:>16.1f}")
        cextra = cmed["gd"] - cmed["task"]
        print(f"CUDA gd - task: {cextra:.1f} MiB (target <= {TARGET_MIB:g} MiB): "
              f"{'PASS' if cextra <= TARGET_MIB else 'FAIL'}")
    print()
    verdict = "PASS" if extra <= TARGET_MIB else "FAIL"
    print(f"{verdict}: GD extra peak memory over the task loss = {extra:.1f} MiB at N={args.n}, D={args.d} "
          f"(ratio to the {TARGET_MIB:g} MiB budget {extra / TARGET_MIB:.2f}; target <= 1.00)")


if __name__ == "__main__":
    main()
