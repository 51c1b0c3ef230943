"""Training from reinforced data (``distill.teacher_cache``): the same losses and gradients as the online teacher
on the same augmentation, the epoch's view replayed for the student, no teacher built, exact resume and
accumulation, and a cache that does not describe the run refused with what differs.

The online side is computed here independently: crop boxes from hashlib + ``sample_crop`` (the documented view
seed), crops with PIL, the teacher built from the same weights file and run on each side's own preprocessing.
"""

import io
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipkd.config import load_config
from clipkd.data.decode import collate_views
from clipkd.data.sources import CsvSource
from clipkd.data.stream import DataPosition
from clipkd.data.views import PairedViews, sample_crop
from clipkd.build import models as builders
from clipkd.build.preflight import preflight
from clipkd.build.models import build_distiller_from_config
from clipkd.build.data import build_stream, stored_views
from clipkd.commands.train import make_trainer
from clipkd.errors import CacheMismatch, ConfigError
from conftest import STUDENT, TEACHER, make_encoder
from test_reinforce import (SCALE, SEED, build, data, expected_fingerprint, expected_view_seed,  # noqa: F401
                            overrides, weights)

ALL_TERMS = {"task": 1.0, "crd": 1.0, "fd": 50.0, "icl": 1.0, "gd": 1.0, "afd": 1.0}


@pytest.fixture(scope="module")
def cache(data, weights, module_tmp):
    """K=2 views, fp32 and bf16, for the CSV (rows of 16) and the shards."""
    root = module_tmp("caches")
    out = {}
    for fmt, dtype in (("csv", "fp32"), ("csv", "bf16"), ("webdataset", "fp32")):
        out[fmt, dtype] = root / f"{fmt}-{dtype}"
        build(out[fmt, dtype], data, weights[0], fmt=fmt, dtype=dtype)
    return out


def run_config(data, weights_file, cache_dir, tmp, fmt="csv", **extra):
    items = {"run_dir": str(tmp / "run"), "distill.teacher_cache": str(cache_dir), "data.batch_size": 8,
             "data.workers": 0, "logging.tensorboard": False, "optim.warmup_steps": 1,
             "data.max_skip_fraction": 1.0,  # the fixture data holds unusable records on purpose
             "data.preprocess": "host", **extra}  # views compared for equality with PIL's (device: a test below)
    return load_config(None, overrides(data, weights_file, fmt, **items))


def first_batch(cfg, epoch=0):
    stored = stored_views(cfg)
    distiller = build_distiller_from_config(cfg, stored=stored)
    stream = build_stream(cfg.data, distiller, cfg.seed, stored=stored)
    stream.start(DataPosition(epoch))
    batch, _ = next(iter(stream))
    return distiller, batch


def online_batch(student, teacher, data, keys, view):
    """Both sides' views of CSV rows ``keys``, crops drawn here from the documented view seed."""
    rows = {r.key: r for r in CsvSource(data["csv"]).records()}
    views = PairedViews(student, teacher, SCALE)
    out = []
    for key in keys:
        raw = rows[key]
        raw_bytes = Path(raw.image).read_bytes()
        image = Image.open(io.BytesIO(raw_bytes)).convert("RGB")
        fp = expected_fingerprint(raw_bytes, raw.caption)
        box = sample_crop(image, SCALE, random.Random(expected_view_seed(SEED, fp, view)))
        one = views.at(image, raw.caption, box)
        one.key = key
        out.append(one)
    return collate_views(out)


def loss_and_grads(distiller, student_images, student_text, teacher_emb):
    distiller.student.zero_grad()
    gen = torch.Generator().manual_seed(7)  # MFD masks: drawn at train time, the same draws on both sides
    s = distiller.student(student_images, student_text, teacher_emb, distiller.mask_ratio, gen)
    values = distiller.loss(s, teacher_emb)
    values["loss"].backward()
    return values, {n: p.grad.clone() for n, p in distiller.student.named_parameters() if p.grad is not None}


FP32 = dict(rtol=1e-5, atol=1e-6)  # float32 rounding: the build ran the teacher on other batches of samples


@pytest.mark.parametrize("dtype,tol", [("fp32", FP32), ("bf16", dict(rtol=2e-2, atol=2e-2))])
def test_cached_losses_and_gradients_equal_the_online_teachers(dtype, tol, cache, data, weights, tmp_path):
    cfg = run_config(data, weights[0], cache["csv", dtype], tmp_path, **{"distill.weights": ALL_TERMS,
                                                                         "distill.mask_ratio": 0.5})
    distiller, batch = first_batch(cfg)
    assert distiller.teacher is None and batch.teacher is not None and batch.teacher.img.shape == (8, 384)
    teacher = make_encoder(TEACHER, pretrained=str(weights[0])).eval()
    online = online_batch(distiller.student.encoder, teacher, data, batch.keys, view=0)  # epoch 0: view 0
    assert torch.equal(online.student_images, batch.student_images)  # the student's view is the replayed crop
    with torch.no_grad():
        t_online = teacher.embed(online.teacher_images, online.teacher_text)
    torch.testing.assert_close(batch.teacher.img, t_online.img, **tol)
    torch.testing.assert_close(batch.teacher.txt, t_online.txt, **tol)
    cached_values, cached_grads = loss_and_grads(distiller, batch.student_images, batch.student_text, batch.teacher)
    online_values, online_grads = loss_and_grads(distiller, online.student_images, online.student_text, t_online)
    assert set(cached_values) == {"loss", *ALL_TERMS}
    loose = FP32 if dtype == "fp32" else dict(rtol=5e-2, atol=5e-3)
    for name in cached_values:
        torch.testing.assert_close(cached_values[name], online_values[name], **loose, msg=name)
    limit = 1e-4 if dtype == "fp32" else 5e-2  # largest difference, relative to the gradient's largest entry
    for name, g in online_grads.items():
        worst = float((cached_grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12))
        assert worst <= limit, (name, worst)


def test_views_made_on_the_device_replay_the_stored_crop(cache, data, weights, tmp_path):
    """``data.preprocess: device``: the batch ships 8-bit regions of the stored crops; made on the device they are
    the online host views of the same crops within 1 level of 255 (``tests/test_device_views.py``)."""
    cfg = run_config(data, weights[0], cache["csv", "fp32"], tmp_path, **{"data.preprocess": "device"})
    distiller, batch = first_batch(cfg)
    teacher = make_encoder(TEACHER, pretrained=str(weights[0])).eval()
    online = online_batch(distiller.student.encoder, teacher, data, batch.keys, view=0)
    got = batch.to("cpu").rendered().student_images
    std = torch.tensor(distiller.student.encoder.preprocess_val.transforms[-1].std).view(1, 3, 1, 1)
    levels = ((got - online.student_images) * std * 255).abs()
    assert got.shape == online.student_images.shape and levels.max() <= 1 + 1e-3 and levels.mean() < 0.02


def test_epoch_e_replays_view_e_mod_k_and_random_order_is_seeded(cache, data, weights, tmp_path):
    cfg = run_config(data, weights[0], cache["csv", "fp32"], tmp_path)
    teacher = make_encoder(TEACHER, pretrained=str(weights[0])).eval()
    for epoch in (0, 1, 2):
        distiller, batch = first_batch(cfg, epoch)
        online = online_batch(distiller.student.encoder, teacher, data, batch.keys, view=epoch % 2)
        assert torch.equal(online.student_images, batch.student_images), epoch
    rnd = run_config(data, weights[0], cache["csv", "fp32"], tmp_path, **{"distill.view_order": "random"})
    seen: dict = {}
    for epoch in range(6):
        now = epoch_teacher_rows(rnd, epoch)
        assert now == epoch_teacher_rows(rnd, epoch)  # seeded: the same draw every time
        for key, row in now.items():
            seen.setdefault(key, set()).add(row)
    counts = [len(v) for v in seen.values()]
    assert max(counts) == 2 and sum(c == 2 for c in counts) >= len(counts) // 2  # both views appear, no third


def epoch_teacher_rows(cfg, epoch):
    """{sample key: its stored teacher image embedding (first entries)} over one epoch."""
    stored = stored_views(cfg)
    stream = build_stream(cfg.data, build_distiller_from_config(cfg, stored=stored), cfg.seed, stored=stored)
    stream.start(DataPosition(epoch))
    return {k: tuple(row[:4].tolist()) for batch, _ in stream for k, row in zip(batch.keys, batch.teacher.img)}


def test_training_from_the_cache_builds_no_teacher_and_resumes_exactly(cache, data, weights, tmp_path, monkeypatch):
    real = builders.build_encoder

    def no_teacher(mc, role="model"):
        assert role != "teacher", "the teacher was built although its embeddings are stored"
        return real(mc, role)

    monkeypatch.setattr(builders, "build_encoder", no_teacher)
    extra = {"distill.recipe": "clipkd", "optim.steps": 7, "checkpoint.every_steps": 3, "data.workers": 2}
    c = cache["webdataset", "fp32"]
    full = make_trainer(run_config(data, weights[0], c, tmp_path / "a", "webdataset", **extra)).fit()
    part = tmp_path / "b" / "run"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / "step_00000003", part / "checkpoints" / "step_00000003")
    resumed = make_trainer(run_config(data, weights[0], c, tmp_path / "b", "webdataset", **extra), resume="latest").fit()
    assert resumed.step == 7 and full.history[3:] == resumed.history  # bit-exact on CPU, across an epoch end
    assert set(full.skipped) == {"bad_image", "missing_caption"} and full.history[0]["crd"] > 0


def test_accumulation_from_the_cache_equals_one_batch(cache, data, weights, tmp_path):
    one = make_trainer(run_config(data, weights[0], cache["csv", "fp32"], tmp_path / "one", **{"optim.steps": 1})).fit()
    two = make_trainer(run_config(data, weights[0], cache["csv", "fp32"], tmp_path / "two",
                             **{"optim.steps": 1, "data.batch_size": 4, "optim.accum_steps": 2})).fit()
    for name, value in one.history[0].items():
        assert two.history[0][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


# --- refusals ------------------------------------------------------------------------------------------------

def _refused(cfg, *expected):
    with pytest.raises(ConfigError) as err:
        make_trainer(cfg)
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_other_teacher_weights_preprocessing_k_or_crops_are_refused(cache, data, weights, tmp_path):
    c = cache["csv", "fp32"]
    _refused(run_config(data, weights[1], c, tmp_path), "distill.teacher_cache", "teacher 0", "weights: sha256:", "in the cache, ")
    _refused(run_config(data, weights[0], c, tmp_path, **{"teacher.image_mean": [0.5, 0.5, 0.5]}),
             "preprocessing: image_mean: None in the cache, [0.5, 0.5, 0.5] now")
    _refused(run_config(data, weights[0], c, tmp_path, **{"distill.cache_views": 3}),
             "views: the cache holds 2 per sample, 3 asked for")
    _refused(run_config(data, weights[0], c, tmp_path, **{"data.crop_scale": [0.9, 1.0]}), "data.crop_scale")
    _refused(run_config(data, weights[0], tmp_path / "nothing", tmp_path), "folder not found", "clipkd reinforce")


def test_edited_csv_row_and_replaced_shard_are_refused(cache, data, weights, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(Path(data["csv"]).parent, edited)
    csv_file = edited / Path(data["csv"]).name
    lines = csv_file.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",an edited caption"
    csv_file.write_text("\n".join(lines) + "\n")
    cfg = run_config({**data, "csv": csv_file}, weights[0], cache["csv", "fp32"], tmp_path)
    _refused(cfg, "data.train", "changed since the cache was built")
    shards = tmp_path / "shards"
    shutil.copytree(Path(data["webdataset"]).parent, shards)  # the same shards elsewhere: the same data
    cfg = run_config({**data, "webdataset": str(shards / "shard-{00000..00002}.tar")}, weights[0],
                     cache["webdataset", "fp32"], tmp_path, "webdataset")
    assert preflight(cfg) is not None
    (shards / "shard-00001.tar").write_bytes((shards / "shard-00000.tar").read_bytes())
    _refused(cfg, f"data shard {shards / 'shard-00001.tar'}: replaced or changed since the cache was built")


def test_image_changed_behind_an_unchanged_csv_stops_training_naming_it(cache, data, weights, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(Path(data["csv"]).parent, copy)
    for row in (10, 12, 13, 14, 15):  # an epoch reads 32 of the 40 rows: some of these are read
        (copy / "images" / f"0000{row}.jpg").write_bytes((copy / "images" / "000011.jpg").read_bytes())
    shutil.copytree(cache["csv", "fp32"], tmp_path / "cache")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["data"]["path"] = str(copy / Path(data["csv"]).name)  # the CSV itself is byte-identical
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    cfg = run_config({**data, "csv": copy / Path(data["csv"]).name}, weights[0], tmp_path / "cache", tmp_path,
                     **{"optim.steps": 6, "data.workers": 2})
    with pytest.raises(CacheMismatch, match=r"0000(10|12|13|14|15)\.jpg: content differs from what the "
                       "cache was built from"):
        make_trainer(cfg).fit()


# --- teacher ensembles ---------------------------------------------------------------------------------------

def ensemble_overrides(weights, shares=(1, 3)):
    """Two teachers of different sizes, resolutions, normalisations and tokenizers (384-d 48 px, 256-d 32 px)."""
    members = [{"model": TEACHER, "pretrained": str(weights[0]), "weight": shares[0]},
               {"model": STUDENT, "weight": shares[1]}]
    return {"teacher": members}


def test_online_ensemble_views_each_teachers_own_preprocessing_and_a_one_teacher_list_is_the_plain_teacher(
        data, weights, tmp_path):
    from clipkd.models.teacher import TeacherEnsemble

    cfg = load_config(None, overrides(data, weights[0], "csv", **{"run_dir": str(tmp_path / "e"),
                      "data.batch_size": 8, "data.workers": 0, **ensemble_overrides(weights)}))
    distiller = build_distiller_from_config(cfg)
    assert isinstance(distiller.teacher, TeacherEnsemble) and distiller.teacher.embed_dims == [384, 256]
    assert distiller.loss.ensemble.weights == (0.25, 0.75) and distiller.student.teacher_dims == (384, 256)
    stream = build_stream(cfg.data, distiller, cfg.seed)
    batch, _ = next(iter(stream))
    batch = batch.rendered()  # data.preprocess: device, each teacher's own view made from the shared regions
    assert [tuple(x.shape) for x in batch.teacher_images] == [(8, 3, 48, 48), (8, 3, 32, 32)]
    t = distiller.teacher_embeddings(batch)
    assert t.img.shape == (8, 640) and t.scale.shape == (2,)
    plain = make_trainer(load_config(None, overrides(data, weights[0], "csv", **{
        "run_dir": str(tmp_path / "p"), "data.batch_size": 8, "data.workers": 0, "optim.steps": 2}))).fit()
    listed = make_trainer(load_config(None, overrides(data, weights[0], "csv", **{
        "run_dir": str(tmp_path / "l"), "data.batch_size": 8, "data.workers": 0, "optim.steps": 2,
        "teacher": [{"model": TEACHER, "pretrained": str(weights[0])}]}))).fit()
    assert plain.history == listed.history  # bit-exact


def test_ensemble_from_reinforced_data_equals_the_online_ensemble(data, weights, tmp_path):
    from clipkd.build.reinforce import run_build
    from clipkd.reinforce.settings import BuildOptions
    from test_reinforce import one_thread

    extra = {"data.batch_size": 8, "data.workers": 0, "distill.weights": ALL_TERMS, "data.preprocess": "host",
             **ensemble_overrides(weights)}
    cfg = load_config(None, overrides(data, weights[0], "csv", **{"run_dir": str(tmp_path / "r"), **extra}))
    with one_thread():
        manifest = run_build(cfg, BuildOptions(out=tmp_path / "cache", views=2, dtype="fp32", batch_size=8,
                                               rows_per_shard=16)).manifest
    assert [t["embed_dim"] for t in manifest["teachers"]] == [384, 256]
    cached = load_config(None, overrides(data, weights[0], "csv", **{
        "run_dir": str(tmp_path / "r"), "distill.teacher_cache": str(tmp_path / "cache"), **extra}))
    distiller, batch = first_batch(cached)
    assert distiller.teacher is None and batch.teacher.img.shape == (8, 640) and batch.teacher.scale.shape == (2,)
    online_teachers = _build_teachers(cfg)  # the same seeded construction as the build (the second is random)
    online = online_batch(distiller.student.encoder, online_teachers, data, batch.keys, view=0)
    from clipkd.models.teacher import TeacherEnsemble

    t_online = TeacherEnsemble(online_teachers)(online.teacher_images, online.teacher_text)
    torch.testing.assert_close(batch.teacher.img, t_online.img, **FP32)
    torch.testing.assert_close(batch.teacher.scale, t_online.scale, **FP32)
    cached_values, _ = loss_and_grads(distiller, batch.student_images, batch.student_text, batch.teacher)
    online_values, _ = loss_and_grads(distiller, online.student_images, online.student_text, t_online)
    for name in cached_values:
        torch.testing.assert_close(cached_values[name], online_values[name], **FP32, msg=name)


def _build_teachers(cfg):
    from clipkd.build.reinforce import load_teachers

    return load_teachers(cfg, torch.device("cpu"))


def test_two_processes_from_the_cache_equal_one_process_with_the_same_global_batch(cache, data, weights, tmp_path):
    """`clipkd train --nproc 2` (batch 4 each) from reinforced data: the global-batch terms of step 1 equal one
    process taking the same two splits' batches as 2 micro-batches of 4 (2 loader workers: the same 2 splits)."""
    import os
    import subprocess
    import sys

    from clipkd.engine.logger import read_metrics

    extra = {"data.batch_size": 4, "optim.steps": 1, "logging.every_steps": 1, "distill.recipe": "clipkd"}
    two = run_config(data, weights[0], cache["csv", "fp32"], tmp_path / "two", **extra, **{"data.workers": 1})
    argv = overrides(data, weights[0], "csv", **{"run_dir": two.run_dir, "distill.teacher_cache": str(
        cache["csv", "fp32"]), "data.workers": 1, "logging.tensorboard": False, "optim.warmup_steps": 1,
        "data.max_skip_fraction": 1.0, "data.preprocess": "host", **extra})
    done = subprocess.run([sys.executable, "-m", "clipkd", "train", "--nproc", "2", *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "no teacher is built" in done.stderr
    one = make_trainer(run_config(data, weights[0], cache["csv", "fp32"], tmp_path / "one", **extra,
                             **{"data.workers": 2, "optim.accum_steps": 2})).fit()
    row = read_metrics(two.run_dir, "train")[0]
    for name in ("loss", "task", "crd", "icl", "fd"):
        assert row[f"train/{name}"] == pytest.approx(one.history[0][name], rel=1e-5, abs=1e-6), name


def test_a_cache_built_from_relative_shard_paths_serves_the_same_shards_named_absolutely(data, weights, tmp_path,
                                                                                       monkeypatch):
    """`clipkd demo --out runs/demo` builds from relative paths; a config naming the same shards absolutely (the
    ablation base, or a run started from another folder) is the same data."""
    from clipkd.build.reinforce import run_build
    from clipkd.reinforce.settings import BuildOptions

    root = Path(data["webdataset"]).parent.parent
    monkeypatch.chdir(root)
    cfg = load_config(None, overrides(data, weights[0], "webdataset"))
    relative = str(Path(data["webdataset"]).relative_to(root))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": relative})})
    run_build(cfg, BuildOptions(out=tmp_path / "cache", views=1, dtype="fp32", batch_size=8))
    make_trainer(run_config(data, weights[0], tmp_path / "cache", tmp_path, "webdataset", **{"distill.cache_views": 1}))
