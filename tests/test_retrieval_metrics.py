"""Retrieval recall@K against a brute-force double loop, plus hand-built cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkd.eval.retrieval_metrics import first_caption_only, retrieval_recall, tie_tolerance


UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}


def brute_force(image_emb, text_emb, text_to_image, ks, dtype=None):
    """Pure-Python reference: ranks by explicit loops over all pairs, scores summed exactly (math.fsum).

    The documented tie rule, written out independently: a wrong candidate counts against the query when it scores
    at least the right one's score minus ``(8 u + D 2^-53) |q| max|c|`` (``u``: the unit roundoff of ``dtype``,
    by default the inputs' own)."""
    u = UNIT_ROUNDOFF[dtype or torch.promote_types(image_emb.dtype, text_emb.dtype)]
    imgs, txts, t2i = image_emb.double().tolist(), text_emb.double().tolist(), text_to_image.tolist()
    dim = len(imgs[0])

    def dot(a, b):
        return math.fsum(x * y for x, y in zip(a, b))

    def norm(v):
        return math.sqrt(math.fsum(x * x for x in v))

    def tol(query, candidates):
        return (8 * u + dim * 2.0 ** -53) * norm(query) * max(norm(c) for c in candidates)

    scores = [[dot(t, i) for i in imgs] for t in txts]  # [T][I]
    # pessimistic ranks: every WRONG candidate scoring at least as high as the best right one, up to rounding
    t_ranks = [sum(s >= row[t2i[t]] - tol(txts[t], imgs) for j, s in enumerate(row) if j != t2i[t])
               for t, row in enumerate(scores)]
    i_ranks = []
    for i in range(len(imgs)):
        best = max(scores[t][i] for t in range(len(txts)) if t2i[t] == i) - tol(imgs[i], txts)
        i_ranks.append(sum(scores[t][i] >= best for t in range(len(txts)) if t2i[t] != i))
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = sum(r < k for r in t_ranks) / len(t_ranks)
        out[f"text_retrieval_recall@{k}"] = sum(r < k for r in i_ranks) / len(i_ranks)
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def random_case(n_img=12, dim=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (n_img,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(n_img), counts)
    t2i = t2i[torch.randperm(t2i.numel(), generator=g)]
    images = F.normalize(torch.randn(n_img, dim, generator=g, dtype=dtype), dim=1)
    texts = F.normalize(images[t2i] + 0.9 * torch.randn(t2i.numel(), dim, generator=g, dtype=dtype), dim=1)
    return images, texts, t2i


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("ks", [(1, 5, 10), (2, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(chunk, ks, seed):
    images, texts, t2i = random_case(seed=seed)
    got = retrieval_recall(images, texts, t2i, ks=ks, chunk=chunk)
    want = brute_force(images, texts, t2i, ks)
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_float32_matches_brute_force_and_is_not_trivial():
    images, texts, t2i = random_case(n_img=20, seed=3, dtype=torch.float32)
    got = retrieval_recall(images, texts, t2i, ks=(1, 5, 10), chunk=7)
    want = brute_force(images, texts, t2i, (1, 5, 10))
    assert got == pytest.approx(want, abs=1e-9)
    assert 0 < got["image_retrieval_recall@1"] < 1  # the case exercises both outcomes


def test_key_order_and_mean():
    images, texts, t2i = random_case()
    got = retrieval_recall(images, texts, t2i, ks=(1, 5))
    assert list(got) == [
        "image_retrieval_recall@1", "text_retrieval_recall@1",
        "image_retrieval_recall@5", "text_retrieval_recall@5", "mean_recall",
    ]
    assert got["mean_recall"] == pytest.approx(sum(list(got.values())[:4]) / 4)


def test_perfect_embeddings():
    images = torch.eye(8)[:5]
    t2i = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])
    texts = images[t2i]
    got = retrieval_recall(images, texts, t2i, ks=(1, 5, 10))
    assert all(v == 1.0 for v in got.values())


def test_caption_whose_image_ranks_second():
    images = torch.eye(8)[:5]
    t2i = torch.arange(5)
    texts = images.clone()
    texts[0] = 0.6 * images[0] + 0.8 * images[1]  # image 1 scores 0.8, its own image 0.6
    got = retrieval_recall(images, texts, t2i, ks=(1, 5))
    assert got["image_retrieval_recall@1"] == pytest.approx(4 / 5)
    assert got["image_retrieval_recall@5"] == 1.0
    assert got["text_retrieval_recall@1"] == 1.0  # image 1: own caption 1.0 beats 0.8


def test_image_to_text_uses_best_own_caption():
    images = torch.eye(4)[:3]
    # image 0 has two captions: a poor one (0.6) and an exact one; caption of image 2 scores 0.8
    texts = torch.stack([
        0.6 * images[0] + 0.8 * images[2],
        images[0],
        images[1],
        0.8 * images[0] + 0.6 * images[2],
    ])
    t2i = torch.tensor([0, 0, 1, 2])
    got = retrieval_recall(images, texts, t2i, ks=(1, 2))
    # image 0: best own caption (1.0) beats caption 3 (0.8) although its other caption (0.6) does not;
    # image 2: its only caption (0.6) loses to caption 0 (0.8)
    assert got["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert got["text_retrieval_recall@2"] == 1.0
    # caption 0 ranks image 2 (0.8) above image 0 (0.6); caption 3 ranks image 0 (0.8) above 2
    assert got["image_retrieval_recall@1"] == pytest.approx(2 / 4)
    assert got["image_retrieval_recall@2"] == 1.0


def test_ties_count_against_the_query():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 identical
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 0 and 1 identical
    t2i = torch.tensor([0, 1, 2])
    got = retrieval_recall(images, texts, t2i, ks=(1, 2))
    # captions 0 and 1 each tie with the other image; image 0 and 1 each tie with the other caption
    assert got["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert got["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert got["image_retrieval_recall@2"] == 1.0  # one tied wrong candidate < K=2
    assert got["text_retrieval_recall@2"] == 1.0


def _chance_recall(n_candidates_wrong: int, k: int) -> float:
    """All scores equal: every wrong candidate ties with the right one, so success iff wrong < K."""
    return 1.0 if n_candidates_wrong < k else 0.0


@pytest.mark.parametrize("collapsed", ["text", "image"])
def test_collapsed_tower_scores_chance(collapsed):
    n_img, dim = 10, 6
    g = torch.Generator().manual_seed(7)
    images = F.normalize(torch.randn(n_img, dim, generator=g, dtype=torch.float64), dim=1)
    t2i = torch.arange(n_img)
    texts = images.clone()
    if collapsed == "text":  # every caption the same embedding: all captions tie for every image
        texts = images[:1].expand(n_img, dim).clone()
    else:  # every image the same embedding: all images tie for every caption
        images = texts[:1].expand(n_img, dim).clone()
    ks = (1, 5, 9, 10)
    got = retrieval_recall(images, texts, t2i, ks=ks)
    for k in ks:
        want = _chance_recall(n_img - 1, k)  # one right candidate among n_img, the other n_img - 1 tie
        if collapsed == "text":
            assert got[f"text_retrieval_recall@{k}"] == want, k
        else:
            assert got[f"image_retrieval_recall@{k}"] == want, k
    assert got == pytest.approx(brute_force(images, texts, t2i, ks), abs=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deliberate_ties_match_brute_force(chunk, seed):
    """Embeddings on a coarse integer grid: many exact score ties, incl. identical captions/images."""
    g = torch.Generator().manual_seed(seed)
    n_img = 15
    counts = torch.randint(1, 4, (n_img,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(n_img), counts)
    t2i = t2i[torch.randperm(t2i.numel(), generator=g)]
    images = torch.randint(0, 2, (n_img, 3), generator=g).double()  # few distinct rows: duplicates
    texts = torch.randint(0, 2, (t2i.numel(), 3), generator=g).double()
    ks = (1, 2, 5)
    got = retrieval_recall(images, texts, t2i, ks=ks, chunk=chunk)
    want = brute_force(images, texts, t2i, ks)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_low_precision_inputs_tie_within_their_own_rounding():
    """bf16/fp16 inputs are scored in float64, with ties up to *their* rounding (coarser than float32's)."""
    images, texts, t2i = random_case(n_img=15, seed=4, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        low_i, low_t = images.to(dtype), texts.to(dtype)
        got = retrieval_recall(low_i, low_t, t2i, chunk=4)
        assert got == pytest.approx(brute_force(low_i, low_t, t2i, (1, 5, 10)), abs=1e-12)
        # the same values handed over as float32 are judged by float32's (finer) rounding
        assert retrieval_recall(low_i.float(), low_t.float(), t2i) == pytest.approx(
            brute_force(low_i.float(), low_t.float(), t2i, (1, 5, 10)), abs=1e-12)


def test_larger_case_chunk_invariant():
    g = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    t2i = torch.arange(300).repeat_interleave(5)
    texts = F.normalize(images[t2i] + torch.randn(1500, 16, generator=g), dim=1)
    assert retrieval_recall(images, texts, t2i, chunk=64) == retrieval_recall(images, texts, t2i, chunk=4096)


def test_invalid_inputs():
    images = torch.eye(4)[:3]
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_recall(images, images[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lie in"):
        retrieval_recall(images, images, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="widths"):
        retrieval_recall(images, torch.eye(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_recall(images, images, torch.arange(3), ks=(0,))
    with pytest.raises(ValueError, match="chunk"):
        retrieval_recall(images, images, torch.arange(3), chunk=0)


def test_first_caption_only():
    t2i = torch.tensor([2, 0, 0, 1, 2, 1, 3])
    first = first_caption_only(t2i)
    assert first.tolist() == [1, 3, 0, 6]
    assert t2i[first].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="without a caption"):
        first_caption_only(torch.tensor([0, 2]))


def test_first_caption_only_protocol_roundtrip():
    images, texts, t2i = random_case(seed=6)
    first = first_caption_only(t2i)
    got = retrieval_recall(images, texts[first], t2i[first], ks=(1, 5))
    want = brute_force(images, texts[first], torch.arange(images.shape[0]), (1, 5))
    assert got == pytest.approx(want)


def _ulp_noise(x, ulps, seed):
    """``x`` with each element moved by up to ``ulps`` units in the last place of its dtype, at random."""
    g = torch.Generator().manual_seed(seed)
    out = x.clone()
    for _ in range(ulps):
        step = torch.randint(-1, 2, x.shape, generator=g)  # -1, 0 or +1 ulp per element
        up, down = torch.nextafter(out, torch.full_like(out, math.inf)), torch.nextafter(out, torch.full_like(out, -math.inf))
        out = torch.where(step > 0, up, torch.where(step < 0, down, out))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("collapsed", ["text", "image"])
def test_rows_equal_up_to_rounding_tie(dtype, collapsed):
    """A collapsed tower whose rows differ only by rounding noise (as two kernels, batch positions or machines
    produce them) still scores chance level: the noise never lets the right candidate win."""
    n_img, dim = 12, 64
    g = torch.Generator().manual_seed(11)
    base = F.normalize(torch.randn(n_img, dim, generator=g, dtype=dtype), dim=1)
    same = _ulp_noise(base[:1].expand(n_img, dim).contiguous(), 2, seed=3)  # 2 ulps per element at most
    assert not torch.equal(same[0], same[1])  # not exact copies
    images, texts = (base, same) if collapsed == "text" else (same, base)
    t2i = torch.arange(n_img)
    ks = (1, 5, 11, 12)
    got = retrieval_recall(images, texts, t2i, ks=ks, chunk=5)
    side = "text" if collapsed == "text" else "image"
    for k in ks:
        assert got[f"{side}_retrieval_recall@{k}"] == _chance_recall(n_img - 1, k), k
    assert got == pytest.approx(brute_force(images, texts, t2i, ks), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tie_tolerance_boundary(dtype):
    """A wrong image scoring below the right one by a quarter of the documented tolerance ties; by four times
    it, it does not (the tolerance for unit vectors, written out: 8 u + D 2^-53)."""
    dim = 16
    u = UNIT_ROUNDOFF[dtype]
    tol = 8 * u + dim * 2.0 ** -53
    assert tie_tolerance(dtype, dim) == pytest.approx(tol, rel=1e-12)
    right = torch.zeros(dim, dtype=torch.float64)
    right[0] = 1.0
    for factor, tied in ((0.25, True), (4.0, False)):
        theta = math.acos(1 - factor * tol)  # cos(theta) = 1 - factor * tol: the wrong image's score
        wrong = torch.zeros(dim, dtype=torch.float64)
        wrong[0], wrong[1] = math.cos(theta), math.sin(theta)
        images = torch.stack([right, wrong]).to(dtype)
        texts = images.clone()  # each caption is its own image's exact copy; the other image scores cos(theta)
        got = retrieval_recall(images, texts, torch.tensor([0, 1]), ks=(1,))
        assert got["image_retrieval_recall@1"] == (0.0 if tied else 1.0), factor
        assert got["text_retrieval_recall@1"] == (0.0 if tied else 1.0), factor
