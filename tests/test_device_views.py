"""Views made on the training device (``data.preprocess: device``): workers ship 8-bit regions, the device resizes,
crops the centre and normalises them as tensor ops; JPEGs decode through libjpeg-turbo straight into arrays.

Pinned to the host path (PIL through each encoder's own torchvision preprocessing: an independent computation) on
natural-image-like JPEGs: from a full decode, 1 level of 255 at most and a mean under 0.02 (measured: 0.002-0.004;
torch's 8-bit antialiased filters round like PIL's, rarely differently); from a reduced decode, whose region is
snapped to the decoded pixels (its edges move by half a decoded pixel at most, a third of a view's pixel or less:
the view shifts by a fraction of a pixel, which shows on sharp edges), within 2x what was measured against the
host's full decode: 32 and 48 px views of 640x480 JPEGs decoded at 1/8, a mean of 1.0-1.1 levels and 14 at most;
224 px views of 1024x768 at 1/2, 0.5-0.7 and 4-6. A region of 4x the view's side or more ships box-filtered by an
integer factor (PIL's ``reduce``) to 2x-4x: 0.4 levels on average, 5 at most. The GPU path (float filters) is in
``tests/test_cuda.py``.
"""

import io
import logging
import random

import numpy as np
import pytest
import torch
from conftest import STUDENT, TEACHER, make_encoder
from PIL import Image

from clipkd.data.decode import UnusableImage, collate_views, decode_record, open_image, open_pixels, open_region
from clipkd.data.sources import RawSample
from clipkd.data.synthetic import natural_jpeg
from clipkd.data.tensor_views import DeferredViews, PackedImages, TensorPreprocess, render, tensor_preprocess
from clipkd.data.views import PairedViews


def _levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| of two normalised views in 8-bit levels."""
    return ((a - b) * torch.tensor(std).view(-1, 3, 1, 1) * 255).abs()


def test_open_clip_preprocessing_has_a_tensor_form():
    """open_clip's ``preprocess_val`` (Resize, CenterCrop, convert, to-tensor, Normalize) and the towers' own."""
    import open_clip

    _, _, pre = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    got = tensor_preprocess(pre)
    assert got == TensorPreprocess(224, 224, "bicubic", tuple(pre.transforms[-1].mean), tuple(pre.transforms[-1].std))
    assert tensor_preprocess(make_encoder(TEACHER).preprocess_val).mode == "bilinear"


def test_a_squashing_resize_has_no_tensor_form():
    """``Resize((s, s))`` squashes to s x s (unlike ``Resize(s)``): not the tensor form; ``CenterCrop((s, s))`` is."""
    from torchvision import transforms as T

    norm = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert tensor_preprocess(T.Compose([T.Resize((32, 32)), T.CenterCrop(32), T.ToTensor(), norm])) is None
    got = tensor_preprocess(T.Compose([T.Resize([32]), T.CenterCrop((32, 32)), T.ToTensor(), norm]))
    assert got is not None and (got.size, got.crop) == (32, 32)


def test_other_preprocessing_has_none_and_build_falls_back(caplog):
    """A preprocessing of another form has no tensor form: PairedViews says which side; the build warns and makes
    the views on the host."""
    from torchvision import transforms as T

    from clipkd.build.data import paired_views
    from clipkd.config import DataConfig

    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    odd = T.Compose([T.RandomCrop(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert tensor_preprocess(odd) is None
    teacher.preprocess_val = odd
    with pytest.raises(ValueError, match="teacher 0's preprocessing"):
        PairedViews(student, teacher, on_device=True)

    class Distiller:
        view_encoders = (student, teacher)

    with caplog.at_level(logging.WARNING):
        views = paired_views(DataConfig(format="csv", train="x.csv"), Distiller())
    assert not views.on_device and "views made on the host" in caplog.text


@pytest.mark.parametrize("seed", range(3))
def test_render_matches_pil_from_a_full_decode(seed):
    """Random regions of several sizes (shorter side above and below the view: down- and up-sampling; shared
    shapes batched together), both filters: the device views against each encoder's PIL preprocessing."""
    rng = random.Random(seed)
    image = open_image(natural_jpeg(320, 240, seed=seed))
    for enc in (make_encoder(STUDENT), make_encoder(TEACHER)):
        pre = tensor_preprocess(enc.preprocess_val)
        boxes = [(rng.randrange(0, 100), rng.randrange(0, 100), rng.randrange(20, 140), rng.randrange(20, 200))
                 for _ in range(6)] + [(0, 0, 240, 320)] * 2
        regions = [torch.from_numpy(np.asarray(image)[t:t + h, l:l + w].copy()) for t, l, h, w in boxes]
        got = render(PackedImages.pack(regions, [b[2:] for b in boxes]), pre)
        want = torch.stack([enc.preprocess_val(image.crop((l, t, l + w, t + h))) for t, l, h, w in boxes])
        diff = _levels(got, want, pre.std)
        assert got.shape == want.shape and diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.02


def _pair(views_host, views_dev, data, seed):
    raw = RawSample(key="k", image=data, caption="a photo")
    a = decode_record(raw, views_host, random.Random(seed))
    b = decode_record(raw, views_dev, random.Random(seed))
    return a, b


@pytest.mark.parametrize("reduced", [False, True])
def test_a_stream_batch_matches_the_host_path(reduced):
    """The same records and crops through both paths, a student and a teacher with different preprocessing: the
    batch's device views (made after ``to``) are the host's within tolerance; the regions move once for both."""
    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    host = PairedViews(student, teacher, (0.9, 1.0))
    dev = PairedViews(student, teacher, (0.9, 1.0), reduced_decode=reduced, on_device=True)
    size = (640, 480) if reduced else (160, 120)  # full decode: a region under 4x the view (shipped as it is)
    pairs = [_pair(host, dev, natural_jpeg(*size, seed=i), i) for i in range(4)]
    assert all(a.crop == b.crop for a, b in pairs)
    want, batch = collate_views([a for a, _ in pairs]), collate_views([b for _, b in pairs])
    assert isinstance(batch.student_images, DeferredViews)
    assert batch.teacher_images.images is batch.student_images.images
    moved = batch.to("cpu")
    assert moved.teacher_images.images is moved.student_images.images and len(moved) == 4
    got = moved.rendered()
    for side, pre in (("student_images", student), ("teacher_images", teacher)):
        diff = _levels(getattr(got, side), getattr(want, side), pre.preprocess_val.transforms[-1].std)
        assert diff.max() <= (28 if reduced else 1 + 1e-3) and diff.mean() < (2.2 if reduced else 0.02)
    assert torch.equal(got.student_text, want.student_text) and torch.equal(got.teacher_text, want.teacher_text)


@pytest.mark.parametrize("box,scale", [((10, 21, 333, 517), 0.5), ((7, 0, 401, 399), 0.125), ((5, 9, 50, 60), 1.0)])
def test_a_snapped_region_is_within_half_a_decoded_pixel(box, scale):
    """Each edge of the region in decoded pixels is the exact edge rounded: half a decoded pixel away at most."""
    from clipkd.data.views import _snapped

    top, left, h, w = _snapped(box, scale)
    exact = [box[0] * scale, box[1] * scale, (box[0] + box[2]) * scale, (box[1] + box[3]) * scale]
    assert all(isinstance(v, int) for v in (top, left, h, w))
    assert max(abs(a - b) for a, b in zip([top, left, top + h, left + w], exact)) <= 0.5


def test_a_large_region_ships_reduced_and_its_view_stays_close():
    """A PNG (never decoded at a reduced scale) of 2000x1500 ships box-filtered by an integer factor to 2x-4x the
    largest view's side (48 px: a shorter side in [96, 192)), not 9 MB of pixels; its views stay within 8 levels of
    255 and 0.8 on average of the host's (measured: 5 and 0.4; a box filter before the antialiased one)."""
    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    buf = io.BytesIO()
    Image.open(io.BytesIO(natural_jpeg(2000, 1500, seed=3))).save(buf, "PNG")
    host = PairedViews(student, teacher, (0.9, 1.0))
    dev = PairedViews(student, teacher, (0.9, 1.0), on_device=True)
    a, b = _pair(host, dev, buf.getvalue(), 0)
    assert 96 <= min(b.student_image.shape[:2]) < 192 and b.aspect == a.crop[2:]
    got = collate_views([b]).rendered()
    for side, enc in (("student_images", student), ("teacher_images", teacher)):
        diff = _levels(getattr(got, side), getattr(collate_views([a]), side), enc.preprocess_val.transforms[-1].std)
        assert diff.max() <= 8 and diff.mean() < 0.8


def test_one_encoder_renders_once_and_an_ensemble_renders_each():
    """Student and teacher of one preprocessing share the rendered tensor; an ensemble gets a tuple, in order."""
    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    data = natural_jpeg(200, 150, seed=1)
    same = PairedViews(student, student, None, on_device=True)
    b = collate_views([decode_record(RawSample("k", data, "x"), same)]).rendered()
    assert b.teacher_images is b.student_images and b.student_images.shape == (1, 3, 32, 32)
    ens = PairedViews(student, [teacher, student], None, on_device=True)
    b = collate_views([decode_record(RawSample("k", data, "x"), ens)]).to("cpu").rendered()
    assert [t.shape[-1] for t in b.teacher_images] == [48, 32]
    assert torch.equal(b.teacher_images[1], b.student_images)


def test_turbo_decode_is_pils():
    """libjpeg-turbo straight into an array: PIL's pixels (full, and at the reduced scale PIL's draft picks), grey
    JPEGs as RGB; ``pick`` sees the size and is called once."""
    data = natural_jpeg(640, 480, seed=2)
    seen = []
    pixels, scale = open_pixels(data, lambda opened: seen.append(opened.size))
    assert seen == [(640, 480)] and scale == 1.0
    assert np.array_equal(pixels, np.asarray(open_image(data)))
    box = (0, 0, 480, 640)
    pixels, scale = open_pixels(data, lambda opened: box, 100)
    pil, pil_scale = open_region(data, lambda opened: box, 100)
    assert scale == pil_scale == 0.25 and pixels.shape == (120, 160, 3)
    assert np.abs(pixels.astype(int) - np.asarray(pil).astype(int)).max() <= 2
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("L").save(buf, "JPEG")
    grey, _ = open_pixels(buf.getvalue(), lambda opened: None)
    assert grey.shape == (480, 640, 3) and np.abs(grey.astype(int) - np.asarray(open_image(buf.getvalue()))).max() <= 1


def test_turbo_scale_is_pils_when_the_size_is_not_a_multiple():
    """A 1001x751 JPEG decoded at 1/4: the scale is exactly 1/4 (as PIL's draft says), though the decoded size is
    rounded up (251x188): the region's box maps with 1/4, not 251/1001."""
    data = natural_jpeg(1001, 751, seed=6)
    box = (3, 5, 700, 990)
    pixels, scale = open_pixels(data, lambda opened: box, 100)
    pil, pil_scale = open_region(data, lambda opened: box, 100)
    assert scale == pil_scale == 0.25 and pixels.shape[:2] == (188, 251) == (pil.height, pil.width)


def test_what_turbo_refuses_pil_decides():
    """A CMYK JPEG (Adobe, inverted) has PIL's colours within 2 levels; a truncated JPEG (refused by libjpeg-turbo
    in strict mode, then by PIL), a too large one and a PNG are classified and decoded as the PIL path does."""
    rgb = Image.open(io.BytesIO(natural_jpeg(120, 90, seed=4)))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG")
    cmyk = buf.getvalue()
    pixels, _ = open_pixels(cmyk, lambda opened: None)
    assert np.abs(pixels.astype(int) - np.asarray(open_image(cmyk)).astype(int)).max() <= 2
    data = natural_jpeg(300, 200, seed=5)
    with pytest.raises(UnusableImage) as exc:
        open_pixels(data[: len(data) // 2], lambda opened: None)
    assert exc.value.reason == "truncated_image"
    with pytest.raises(UnusableImage) as exc:
        open_pixels(data, lambda opened: None, max_pixels=300 * 200 - 1)
    assert exc.value.reason == "too_large"
    png = io.BytesIO()
    rgb.save(png, "PNG")
    pixels, _ = open_pixels(png.getvalue(), lambda opened: None)
    assert np.array_equal(pixels, np.asarray(rgb.convert("RGB")))


def test_old_checkpoints_compare_as_host_views():
    """A config saved before ``data.preprocess`` existed made its views on the host: resuming it names the new
    default as a change, and ``data.preprocess: host`` resumes it as it was."""
    from clipkd.config_diff import breaking_changes

    saved = {"data": {"format": "csv", "decode": "full"}}
    assert breaking_changes(saved, {"data": {"format": "csv", "decode": "full", "preprocess": "host"}}) == []
    assert breaking_changes(saved, {"data": {"format": "csv", "decode": "full", "preprocess": "device"}}) == [
        "data.preprocess: 'host' -> 'device'"]
