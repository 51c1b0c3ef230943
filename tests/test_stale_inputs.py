"""No result leans on a stale input: a replaced teacher folder, a sidecar copied in from another build, a shard
listed twice, another pixel limit, data rebuilt under the same name.

Each case is made as a user would make it (files replaced in place, under the same names) and must be refused
up front with a message that names what changed.
"""

import json
import shutil
from pathlib import Path

import pytest

from clipkd.config import load_config
from clipkd.data.synthetic import write_csv, write_shards
from clipkd.build.preflight import preflight
from clipkd.errors import ConfigError
from clipkd.build.reinforce import run_build
from clipkd.reinforce.check import cache_problems, manifest_problems, sidecar_problems
from clipkd.reinforce.manifest import load_manifest
from clipkd.reinforce.settings import BuildOptions
from conftest import STUDENT
from test_identity import _open_clip_folder


def _cfg(data: str, teacher: str, fmt: str = "csv", **extra):
    items = {"run_dir": "unused", "seed": 3, "device": "cpu", "student.model": STUDENT, "teacher.model": teacher,
             "data.format": fmt, "data.train": data, "data.crop_scale": [0.5, 1.0], "optim.steps": 1,
             "logging.progress": False, "distill.recipe": "fd", **extra}
    return load_config(None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()])


def _build(out: Path, cfg, views: int = 1, **kw):
    return run_build(cfg, BuildOptions(out=out, views=views, dtype="fp32", batch_size=8, rows_per_shard=8), **kw)


@pytest.fixture(scope="module")
def pairs(module_tmp):
    return write_csv(module_tmp("pairs") / "csv", 20, size=40)


def test_a_replaced_local_dir_teacher_is_not_taken_for_the_old_one(tmp_path, pairs, caplog):
    """The issue's reproduction: reinforce with teacher.model=local-dir:FOLDER, export another teacher into the
    folder, train from the cache: refused (it was accepted, and the student learned the old teacher)."""
    folder = _open_clip_folder(tmp_path / "teacher", seed=2)
    cfg = _cfg(pairs, f"local-dir:{folder}")
    _build(tmp_path / "cache", cfg)
    trained = _cfg(pairs, f"local-dir:{folder}", **{"distill.teacher_cache": str(tmp_path / "cache")})
    preflight(trained)  # the same teacher: fine
    moved = shutil.copytree(folder, tmp_path / "moved")  # the same teacher elsewhere: fine (content, not path)
    preflight(_cfg(pairs, f"local-dir:{moved}", **{"distill.teacher_cache": str(tmp_path / "cache")}))
    _open_clip_folder(folder, seed=5)
    with pytest.raises(ConfigError, match=r"distill.teacher_cache: .*teacher 0 \(local-dir:.*\): weights: "
                                          r"folder-sha256:\w+ in the cache, folder-sha256:\w+ now"):
        preflight(trained)
    shutil.rmtree(folder)  # training from the cache needs no teacher: gone, it cannot be compared, only named
    with caplog.at_level("WARNING", logger="clipkd.reinforce.check"):
        preflight(trained)
    assert "its files are not here to compare by content" in caplog.text


def test_an_interrupted_build_does_not_resume_with_another_teacher(tmp_path, pairs):
    folder = _open_clip_folder(tmp_path / "teacher", seed=2)
    cfg = _cfg(pairs, f"local-dir:{folder}")

    def crash(index):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        _build(tmp_path / "cache", cfg, after_sidecar=crash)
    _open_clip_folder(folder, seed=5)
    with pytest.raises(ConfigError, match=r"(?s)holds a reinforce build with other settings.*teachers\.0\.weights"):
        _build(tmp_path / "cache", cfg)


def test_sidecars_are_checked_against_the_build(tmp_path, pairs, capsys):
    """A sidecar copied in from another build of the same data (same size) is refused at training start by its
    header; `clipkd reinforce --verify` finds it (and a damaged byte) by its SHA-256; a truncated one by its size."""
    from clipkd.cli import main
    from test_identity import _open_clip_folder as export

    a, b = export(tmp_path / "a", seed=2), export(tmp_path / "b", seed=5)
    _build(tmp_path / "cache-a", _cfg(pairs, f"local-dir:{a}"))
    _build(tmp_path / "cache-b", _cfg(pairs, f"local-dir:{b}"))
    cfg = _cfg(pairs, f"local-dir:{a}")
    manifest = load_manifest(tmp_path / "cache-a")
    first = manifest["data"]["sidecars"][0]["file"]
    assert sidecar_problems(tmp_path / "cache-a", manifest, full=True) == []
    assert main(["reinforce", "--verify", "--out", str(tmp_path / "cache-a")]) == 0
    assert "all 3 sidecars are what the build wrote" in capsys.readouterr().out
    good = (tmp_path / "cache-a" / first).read_bytes()
    shutil.copy(tmp_path / "cache-b" / first, tmp_path / "cache-a" / first)
    assert (tmp_path / "cache-a" / first).stat().st_size == len(good)  # the size alone cannot tell
    _, problems = cache_problems(str(tmp_path / "cache-a"), [cfg.teacher], cfg.data, None)
    assert len(problems) == 1 and problems[0].startswith(f"{first}: written by another build")
    damaged = bytearray(good)
    damaged[-5] ^= 1  # one bit of an embedding: same size, same header
    (tmp_path / "cache-a" / first).write_bytes(bytes(damaged))
    assert cache_problems(str(tmp_path / "cache-a"), [cfg.teacher], cfg.data, None)[1] == []  # cheap: unseen
    assert main(["reinforce", "--verify", "--out", str(tmp_path / "cache-a")]) == 1
    assert (f"{first}: its content is not what the build wrote (SHA-256 differs: copied in from another build, or "
            "damaged)") in capsys.readouterr().out
    (tmp_path / "cache-a" / first).write_bytes(good[:-10])
    _, problems = cache_problems(str(tmp_path / "cache-a"), [cfg.teacher], cfg.data, None)
    assert problems == [f"{first}: {len(good) - 10} bytes, the build wrote {len(good)} (replaced or truncated since)"]
    assert main(["reinforce", "--verify", "--out", str(tmp_path / "cache-a"), "--views", "2"]) == 2
    assert "--verify checks the build in --out and takes nothing else (--views given)" in capsys.readouterr().err


def test_a_shard_listed_twice_is_refused_where_reinforced_data_is_involved(tmp_path):
    """Reinforced data has one sidecar per shard: a shard listed twice (also as two spellings of one file) is
    refused up front by `clipkd reinforce` and by training from a cache (it stopped training mid-run with
    CacheMismatch); online training may list a shard twice to read it twice per epoch."""
    from clipkd.commands.reinforce import preflight as reinforce_preflight

    write_shards(tmp_path / "wds", 16, per_shard=8, size=40)
    shard = tmp_path / "wds" / "shard-00000.tar"
    message = r"data.train: a shard is listed twice \(.*shard-00000.tar.*\); list each shard once"
    for listed in ([str(shard), str(tmp_path / "wds" / "shard-00001.tar"), str(shard)],
                   [str(shard), str(tmp_path / "wds" / ".." / "wds" / "shard-00000.tar")]):
        online = _cfg(listed, "clipkd-tiny-teacher", fmt="webdataset")
        preflight(online)
        with pytest.raises(ConfigError, match=message):
            reinforce_preflight(online)
        cached = _cfg(listed, "clipkd-tiny-teacher", fmt="webdataset", **{"distill.teacher_cache": str(tmp_path)})
        with pytest.raises(ConfigError, match=message):
            preflight(cached)


def test_the_pixel_limit_is_part_of_the_build(tmp_path, pairs, monkeypatch):
    cfg = _cfg(pairs, "clipkd-tiny-teacher")
    _build(tmp_path / "cache", cfg)
    manifest = load_manifest(tmp_path / "cache")
    assert manifest_problems(manifest, [cfg.teacher], cfg.data, 1) == []
    higher = _cfg(pairs, "clipkd-tiny-teacher", **{"data.max_image_pixels": 2 * cfg.data.max_image_pixels})
    assert manifest_problems(manifest, [higher.teacher], higher.data, 1) == [
        f"data.max_image_pixels: {cfg.data.max_image_pixels} in the cache, {2 * cfg.data.max_image_pixels} now (it "
        "decides which images were too large to have a stored view)"]


def test_a_teacher_cache_that_is_a_training_run_says_so(tmp_path, pairs):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    cfg = _cfg(pairs, "clipkd-tiny-teacher")
    _, problems = cache_problems(str(run), [cfg.teacher], cfg.data, None)
    assert problems == ["a training run folder, not reinforced data; distill.teacher_cache takes the --out folder "
                        "of `clipkd reinforce -c run.yaml --views K --out DIR`"]
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "build.json").write_text("{}")
    _, problems = cache_problems(str(tmp_path / "unfinished"), [cfg.teacher], cfg.data, None)
    assert "unfinished `clipkd reinforce` build" in problems[0]


def test_a_run_does_not_resume_on_rebuilt_data(tmp_path):
    """A run's data rewritten in place under the same name (same config text): resuming is refused, naming the
    data; ``allow_config_change`` continues on purpose; the same content elsewhere is the same data."""
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    csv = Path(write_csv(tmp_path / "pairs", 32, size=40))
    items = {"data.format": "csv", "data.train": str(csv), "distill.recipe": "baseline", "optim.steps": 2,
             "checkpoint.every_steps": 1}
    cfg = load_config(None, base_overrides(tmp_path / "run", tmp_path, "csv", **items))
    make_trainer(cfg).fit()
    assert json.loads((tmp_path / "run" / "inputs.json").read_text())["data"]["format"] == "csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # the same pairs, another order
    with pytest.raises(ConfigError, match=r"(?s)the run's inputs changed since it started.*inputs\.data\.sha256"):
        make_trainer(cfg, resume="latest")
    assert make_trainer(cfg, resume="latest", allow_config_change=True).fit().step == 2


@pytest.fixture
def study(tmp_path):
    """A one-arm study (baseline) whose teacher weights are a file, and its base config's parts."""
    import yaml
    from safetensors.torch import save_file

    from conftest import TEACHER, make_encoder
    from test_ablate import write_base

    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in make_encoder(TEACHER, seed=2).model.state_dict().items()}, str(weights))
    base = write_base(tmp_path, {"model": TEACHER, "pretrained": str(weights)}, steps=2)
    benches = base["eval"]["benchmarks"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "out": "out", "recipes": ["baseline"], "seeds": [0],
                                    "curve_points": 1, "select": {"val": "val", "test": "test"}}))
    return path, weights, Path(base["data"]["train"]), benches


def test_ablate_does_not_reuse_what_changed(study):
    """The teacher replaced in place: its scores are measured again (they were reused: every gap and share was
    wrong). The data rebuilt in place: the finished run is trained again (it was reused)."""
    from clipkd.cli import main
    from clipkd.config import BenchmarkSpec
    from clipkd.eval.runner import Benchmark
    from clipkd.models.factory import create_encoder
    from conftest import TEACHER, make_encoder
    from safetensors.torch import save_file

    path, weights, csv, benches = study
    out = path.parent / "out"
    assert main(["ablate", "-c", str(path)]) == 0
    first = json.loads((out / "runs" / "baseline-seed0" / "result.json").read_text())
    save_file({k: v.contiguous() for k, v in make_encoder(TEACHER, seed=7).model.state_dict().items()}, str(weights))
    assert main(["ablate", "-c", str(path)]) == 0
    teacher = create_encoder(TEACHER, str(weights), role="teacher").eval()
    want = {side: Benchmark(BenchmarkSpec(**b)).evaluate(teacher)["acc1"] for side, b in zip(("val", "test"), benches)}
    assert json.loads((out / "teacher.json").read_text())["scores"] == pytest.approx(want)
    assert not list((out / "runs").glob("baseline-seed0.replaced-*"))  # baseline uses no teacher: kept
    assert json.loads((out / "runs" / "baseline-seed0" / "result.json").read_text()) == first
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    assert main(["ablate", "-c", str(path)]) == 0
    assert len(list((out / "runs").glob("baseline-seed0.replaced-*"))) == 1  # trained again on the new data


def test_ablate_refuses_val_and_test_of_the_same_data(study, capsys):
    import yaml

    from clipkd.cli import main

    path, _, _, benches = study
    base = yaml.safe_load((path.parent / "base.yaml").read_text())
    copy = shutil.copytree(benches[1]["path"], path.parent / "test-copy")
    base["eval"]["benchmarks"][0]["path"] = str(copy)  # "val" is the test images under another name
    (path.parent / "base.yaml").write_text(yaml.safe_dump(base))
    assert main(["ablate", "-c", str(path), "--dry-run"]) == 2
    assert "select.val ('val') and select.test ('test') are the same data" in capsys.readouterr().err
    shutil.rmtree(copy / "red")  # a part of the test images under another name: still refused
    assert main(["ablate", "-c", str(path), "--dry-run"]) == 2
    assert "select.val ('val') and select.test ('test') are sharing 14 of their images (14 and 16)" in \
        capsys.readouterr().err


def test_ablate_refuses_a_metric_the_benchmark_does_not_report(study, capsys):
    """acc5 is not reported for 5 classes or fewer: the study says so before training (it was a KeyError)."""
    import yaml

    from clipkd.cli import main

    path = study[0]
    raw = yaml.safe_load(path.read_text())
    raw["select"]["metric"] = "acc5"
    for b in study[3]:  # 8 colour classes: keep 4
        for extra in sorted(Path(b["path"]).iterdir())[4:]:
            shutil.rmtree(extra)
    path.write_text(yaml.safe_dump(raw))
    assert main(["ablate", "-c", str(path)]) == 2
    assert "select.metric: benchmark 'val' does not report 'acc5' (it reports acc1, mean_per_class_recall)" in \
        capsys.readouterr().err
    assert not (path.parent / "out" / "runs").exists()  # nothing trained


def test_a_build_resumed_by_a_later_clipkd_names_every_sidecar_alike(tmp_path, pairs, monkeypatch):
    """A later clipkd may describe the same settings with an extra key (equal under the resume rule); the sidecars
    it adds carry the digest of the folder's own build.json, like the first ones, so none is taken for another
    build's."""
    import clipkd.build.reinforce as build

    cfg = _cfg(pairs, "clipkd-tiny-teacher")

    def crash(index):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        _build(tmp_path / "cache", cfg, after_sidecar=crash)
    real = build.build_settings
    monkeypatch.setattr(build, "build_settings", lambda *a: {**real(*a), "a_later_setting": None})
    _build(tmp_path / "cache", cfg)
    manifest = load_manifest(tmp_path / "cache")
    assert len(manifest["data"]["sidecars"]) == 3
    assert sidecar_problems(tmp_path / "cache", manifest) == []
