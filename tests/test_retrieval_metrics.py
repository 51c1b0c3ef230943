"""Retrieval recall@K against a brute-force double loop, plus hand-built cases."""

import pytest
import torch
import torch.nn.functional as F

from clipkd.eval.retrieval_metrics import first_caption_only, retrieval_recall


def brute_force(image_emb, text_emb, text_to_image, ks):
    """Pure-Python reference: ranks by explicit loops over all pairs."""
    imgs, txts, t2i = image_emb.tolist(), text_emb.tolist(), text_to_image.tolist()

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    scores = [[dot(t, i) for i in imgs] for t in txts]  # [T][I]
    # pessimistic ranks: every WRONG candidate scoring at least as high as the best right one counts
    t_ranks = [sum(s >= row[t2i[t]] for j, s in enumerate(row) if j != t2i[t]) for t, row in enumerate(scores)]
    i_ranks = []
    for i in range(len(imgs)):
        best = max(scores[t][i] for t in range(len(txts)) if t2i[t] == i)
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
    want = brute_force(images.double(), texts.double(), t2i, (1, 5, 10))
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


def test_bfloat16_input_is_upcast():
    images, texts, t2i = random_case(n_img=15, seed=4, dtype=torch.float32)
    images, texts = images.bfloat16(), texts.bfloat16()
    got = retrieval_recall(images, texts, t2i, chunk=4)
    want = retrieval_recall(images.float(), texts.float(), t2i, chunk=1000)
    assert got == want
    assert all(0.0 <= v <= 1.0 for v in got.values())
    assert retrieval_recall(images.half(), texts.half(), t2i) == pytest.approx(got, abs=0.15)


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
