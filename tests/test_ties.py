"""Ties that must not depend on the machine: identical caption texts share one embedding; zero-shot classes that
score the same up to rounding count against the image, as retrieval candidates do."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipkd.eval.datasets import CaptionedImages
from clipkd.eval.retrieval import embed_captions, evaluate_retrieval
from clipkd.models.encoders import ClipEncoder

WORDS = ["red", "green", "blue"]


class PositionNoiseEncoder(ClipEncoder):
    """Images embed as one-hot colours; a caption as its colour word's one-hot plus noise that depends on its
    position in the batch (as a kernel's tail handling can make it), larger than any rounding tolerance."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.image_size = 4, (4, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.preprocess_val = self.preprocess_train = lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float32)
        self.tokenizer = lambda texts: torch.tensor([WORDS.index(t.split()[-1]) for t in texts])

    def encode_image(self, images, normalize=True):
        return F.normalize(torch.cat([images, torch.zeros(len(images), 1)], 1), dim=-1)

    def encode_text(self, text, normalize=True):
        noise = 1e-2 * torch.arange(len(text), dtype=torch.float32)[:, None] * torch.tensor([[0, 0, 0, 1.0]])
        return F.normalize(F.one_hot(text, 4).float() + noise, dim=-1)


def test_identical_captions_get_identical_embeddings():
    enc = PositionNoiseEncoder()
    captions = ["a red", "a blue", "a red", "a red", "a green", "a blue"]
    emb = embed_captions(enc, captions, "cpu", batch_size=4)
    for i, a in enumerate(captions):
        for j, b in enumerate(captions):
            assert torch.equal(emb[i], emb[j]) == (a == b), (a, b)
    assert emb.shape == (6, 4)
    assert embed_captions(enc, [], "cpu").shape[0] == 0


def test_repeated_captions_tie_in_retrieval():
    """Two red images, each captioned "a red": each caption ties with the other red image, so text->image R@1
    fails for both (the documented pessimistic rule) whatever their batch positions; "a blue" succeeds."""
    colours = {"red": (1, 0, 0), "blue": (0, 0, 1)}
    images = [Image.new("RGB", (2, 2), colours[c]) for c in ("red", "red", "blue")]
    data = CaptionedImages(images=[_png(im) for im in images], captions=["a red", "a red", "a blue"],
                           text_to_image=torch.tensor([0, 1, 2]), names=["r0", "r1", "b"])
    got = evaluate_retrieval(PositionNoiseEncoder(), data, ks=(1, 2), batch_size=8)
    assert got["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert got["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert got["image_retrieval_recall@2"] == 1.0


def _png(image):
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_zeroshot_ties_count_against_the_image():
    """Images whose embedding is equally close to every class (exactly, or up to 1-2 ulps of noise per element, as
    another kernel or machine makes it) score 0 top-1 and top-5 (8 classes: 7 tie with the right one), not the
    share of whichever class a sort or the noise puts first; a clearly right image still scores."""
    from clipkd.eval.zeroshot import zeroshot_metrics
    from test_retrieval_metrics import _ulp_noise

    classifier = torch.eye(16)[:, :8]  # [D, C]: class c's weight is basis vector c
    equal = F.normalize(torch.cat([torch.ones(24, 8), torch.zeros(24, 8)], 1), dim=1)  # cosine 8^-0.5 to each
    targets = torch.arange(24) % 8
    for feats in (equal, _ulp_noise(equal, 2, seed=1)):
        got = zeroshot_metrics(feats, targets, classifier)
        assert (got["acc1"], got["acc5"], got["mean_per_class_recall"]) == (0.0, 0.0, 0.0)
    right = F.normalize(equal + 0.1 * classifier.T[targets], dim=1)  # leans towards its own class
    got = zeroshot_metrics(right, targets, classifier)
    assert (got["acc1"], got["acc5"]) == (1.0, 1.0)


def test_nan_embeddings_are_never_right():
    """A diverged model's NaN embeddings score 0, not 100% (every comparison with NaN is false)."""
    from clipkd.eval.zeroshot import classification_metrics, zeroshot_metrics

    classifier = torch.eye(16)[:, :8]
    feats = torch.full((6, 16), float("nan"))
    got = zeroshot_metrics(feats, torch.arange(6), classifier)
    assert (got["acc1"], got["acc5"], got["mean_per_class_recall"]) == (0.0, 0.0, 0.0)
    logits = torch.tensor([[2.0, 1.0, 0.0], [float("nan"), 1.0, 0.0], [0.0, 3.0, float("nan")]])
    assert classification_metrics(logits, torch.tensor([0, 0, 1]), 3)["acc1"] == pytest.approx(1 / 3)  # row 0 only
