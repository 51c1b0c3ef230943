"""Config validation: every malformed config is rejected before compute, naming the field."""

import pytest

from clipkd.cli import main
from clipkd.config import ConfigError, apply_overrides, dump_config, load_config

MINIMAL = ["run_dir=r", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit", "data.format=csv",
           "data.train=x.csv", "optim.steps=3"]


def test_minimal_config_and_defaults():
    cfg = load_config(None, MINIMAL)
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0.1 and cfg.optim.betas == (0.9, 0.98)
    assert cfg.optim.eps == 1e-6 and cfg.distill.resolved() == ({"task": 1, "crd": 1, "icl": 1, "fd": 2000}, 0.0)
    assert load_config(None, MINIMAL + ["distill.recipe=mfd"]).distill.resolved()[1] == 0.75
    assert load_config(None, MINIMAL + ["distill.weights={task: 1, gd: 3}"]).distill.resolved()[0] == {"task": 1,
                                                                                                         "gd": 3}
    gd = load_config(None, MINIMAL + ["distill.recipe=gd"]).distill
    assert gd.resolved() == ({"task": 1, "gd": 5e6}, 0.0)  # reference N=1024, D=512
    assert gd.resolved(256, 384)[0] == {"task": 1, "gd": pytest.approx(5e6 * (1 / 16) * 0.75 * 0.8)}  # 187500
    assert "recipe: clipkd" in dump_config(cfg)


@pytest.mark.parametrize(
    "override, field, message",
    [
        ("data.bogus=1", "data.bogus", "unknown field"),
        ("optim.lr=-1", "optim.lr", "greater than 0"),
        ("optim.lr=fast", "optim.lr", "valid number"),
        ("distill.recipe=nope", "distill.recipe", "unknown recipe 'nope'"),
        ("distill.weights={task: 1, zz: 2}", "distill.weights", "unknown loss term"),
        ("distill.weights={task: -1}", "distill.weights", ">= 0"),
        ("distill.mask_ratio=1.0", "distill.mask_ratio", "less than 1"),
        ("data.format=parquet", "data.format", "webdataset"),
        ("data.crop_scale=[0.9, 0.5]", "data.crop_scale", "0 < low <= high <= 1"),
        ("precision=fp8", "precision", "fp32"),
        ("data.batch_size=0", "data.batch_size", "greater than 0"),
        ("optim.betas=[0.9, 1.5]", "optim.betas", "[0, 1)"),
    ],
)
def test_bad_values_name_the_field(override, field, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, MINIMAL + [override])
    text = str(err.value)
    assert f"  {field}: " in text and message in text


def test_missing_sections_and_budget():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run_dir=r", "optim.lr=0.1"])
    text = str(err.value)
    for field in ("teacher", "student", "data", "optim"):
        assert f"  {field}:" in text


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    with pytest.raises(ConfigError, match="'3' is not an index of a list of 1"):
        apply_overrides({"eval": {"benchmarks": [{}]}}, ["eval.benchmarks.3.root=x"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides({}, ["data.train=[a, b"])
    assert apply_overrides({"eval": {"benchmarks": [{}]}}, ["eval.benchmarks.0.root=x"]) == \
        {"eval": {"benchmarks": [{"root": "x"}]}}


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_cli_rejects_before_compute(capsys, tmp_path):
    assert main(["train", *MINIMAL, f"run_dir={tmp_path / 'r'}", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and "optim.lr" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["tiny-csv.yaml", "tiny-wds.yaml", "paper-vitb16-vitt16-cc3m-csv.yaml",
                                  "paper-vitb16-vitt16-cc3m-wds.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "configs" / name)
    assert cfg.optim.lr == 1e-3
    if name.startswith("paper"):
        assert cfg.data.batch_size == 128 and cfg.optim.epochs == 32 and cfg.optim.warmup_steps == 10000


def test_preflight_names_missing_files_and_unknown_models(tmp_path, capsys):
    args = ["train", f"run_dir={tmp_path / 'r'}", "teacher.model=no-such-model", "student.model=clipkd-tiny-vit",
            "data.format=webdataset", f"data.train={tmp_path}/shard-{{000..002}}.tar", "optim.steps=1",
            f"student.pretrained={tmp_path}/missing.pt"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "teacher.model: unknown model 'no-such-model'" in err
    assert "data.train: 3 of 3 shards not found" in err and "student.pretrained: checkpoint file not found" in err
    assert not (tmp_path / "r").exists()


# -- paths: relative to the config file (file values) or the working folder (command-line overrides) ----------

def _write_yaml(path, data) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "weights").mkdir(parents=True)
    b.mkdir()
    (a / "weights" / "teacher.ckpt.v2").write_bytes(b"")
    raw = {
        "run_dir": "runs/x",
        "teacher": {"model": "ViT-B-16", "pretrained": "weights/teacher.ckpt.v2"},
        "student": {"model": "models/student.json", "pretrained": "student.safetensors"},
        "distill": {"teacher_cache": "cache.pt"},
        "data": {"format": "webdataset", "train": ["s/{000..001}.tar", "pipe:cat x.tar", "https://h.org/x.tar"],
                 "crop_scale": None},
        "optim": {"steps": 1},
        "eval": {"val_data": {"format": "csv", "train": "../val.csv", "root": "imgs"},
                 "benchmarks": [{"name": "in", "task": "zeroshot", "format": "folder", "path": "inval",
                                 "classnames": "imagenet", "templates": "t.txt"},
                                {"name": "c", "task": "retrieval", "format": "webdataset",
                                 "path": "r/{0..1}.tar::/abs/r.tar"}]},
    }
    _write_yaml(a / "run.yaml", raw)
    monkeypatch.chdir(b)
    cfg = load_config("../A/run.yaml")
    assert cfg.run_dir == str(a / "runs" / "x")
    assert cfg.teacher.pretrained == str(a / "weights" / "teacher.ckpt.v2")  # an existing file with a dot
    assert cfg.student.model == str(a / "models" / "student.json")
    assert cfg.student.pretrained == str(a / "student.safetensors")  # a weight suffix: a path even if missing
    assert cfg.distill.teacher_cache == str(a / "cache.pt")
    assert cfg.data.train == [str(a / "s" / "{000..001}.tar"), "pipe:cat x.tar", "https://h.org/x.tar"]
    assert cfg.eval.val_data.train == str(tmp_path / "val.csv") and cfg.eval.val_data.root == str(a / "imgs")
    zs, rt = cfg.eval.benchmarks
    assert zs.path == str(a / "inval") and zs.classnames == "imagenet" and zs.templates == str(a / "t.txt")
    assert rt.path == f"{a / 'r' / '{0..1}.tar'}::/abs/r.tar"
    assert f"run_dir: {a / 'runs' / 'x'}" in dump_config(cfg)


@pytest.mark.parametrize("tag", ["laion2b_s34b_b88k", "openai", "datacomp_xl_s13b_b90k", "v1.0"])
def test_pretrained_tags_and_hub_names_are_not_paths(tag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, MINIMAL + [f"teacher.pretrained={tag}", "student.model=hf-hub:timm/x",
                                       "teacher.model=local-dir:models/t"])
    assert cfg.teacher.pretrained == tag and cfg.student.model == "hf-hub:timm/x"
    assert cfg.teacher.model == f"local-dir:{tmp_path / 'models' / 't'}"


def test_overrides_resolve_against_the_working_folder(tmp_path, monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    _write_yaml(a / "run.yaml", {"run_dir": "r", "data": {"format": "csv", "train": "a.csv"}})
    monkeypatch.chdir(b)
    bench = '[{name: x, task: zeroshot, format: folder, path: val}]'
    cfg = load_config(a / "run.yaml", MINIMAL[1:3] + ["optim.steps=1", "data.root=imgs", "teacher.pretrained=t.pt",
                                                      f"eval.benchmarks={bench}", "eval.benchmarks.0.root=rt"])
    assert cfg.run_dir == str(a / "r") and cfg.data.train == str(a / "a.csv")
    assert cfg.data.root == str(b / "imgs") and cfg.teacher.pretrained == str(b / "t.pt")
    assert cfg.eval.benchmarks[0].path == str(b / "val") and cfg.eval.benchmarks[0].root == str(b / "rt")


def test_run_from_one_folder_evaluates_and_resumes_from_another(data_dir, tmp_path, monkeypatch, capsys):
    """Relative paths in a run's YAML keep working when the run is evaluated or resumed elsewhere."""
    import shutil

    import torch
    from PIL import Image

    from conftest import TEACHER, make_encoder
    from clipkd.engine.checkpoint import list_checkpoints

    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(data_dir / "csv", a / "data")
    b.mkdir()
    torch.save(make_encoder(TEACHER).model.state_dict(), a / "teacher.pt")
    for name, rgb in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
        (a / "val" / name).mkdir(parents=True)
        Image.new("RGB", (20, 20), rgb).save(a / "val" / name / "0.png")
    _write_yaml(a / "run.yaml", {
        "run_dir": "run", "device": "cpu", "teacher": {"model": TEACHER, "pretrained": "teacher.pt"},
        "student": {"model": "clipkd-tiny-vit"},
        "data": {"format": "csv", "train": "data/data.csv", "batch_size": 8, "workers": 0},
        "optim": {"steps": 2, "warmup_steps": 1}, "checkpoint": {"every_steps": 1},
        "logging": {"progress": False, "tensorboard": False}})
    monkeypatch.chdir(a)
    assert main(["train", "-c", "run.yaml"]) == 0
    monkeypatch.chdir(b)
    out = b / "res"
    assert main(["eval", "--run", str(a / "run"), "--side", "teacher", "--zeroshot", "folder:../A/val",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert len(list(out.glob("*.json"))) == 1
    first, last = list_checkpoints(a / "run")
    shutil.rmtree(last)  # as if interrupted after step 1
    written = (first / "student.safetensors").stat().st_mtime_ns
    assert main(["train", "-c", str(a / "run" / "config.yaml"), "--resume", "latest"]) == 0, \
        capsys.readouterr().err
    assert "done: step 2" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(a / "run")] == ["step_00000001", "step_00000002"]
    assert (first / "student.safetensors").stat().st_mtime_ns == written  # resumed, not started afresh
    assert not (b / "run").exists()


def test_dump_config_saves_absolute_paths_for_configs_built_in_code(tmp_path, monkeypatch):
    """A config validated from a dict (not loaded from a file) is saved with paths against the working folder."""
    import yaml

    from clipkd.config import validate_config

    monkeypatch.chdir(tmp_path)
    raw = load_config(None, MINIMAL).model_dump()
    raw.update(run_dir="runs/x", data={**raw["data"], "train": "d/train.csv"})
    saved = yaml.safe_load(dump_config(validate_config(raw)))
    assert saved["run_dir"] == str(tmp_path / "runs" / "x") and saved["data"]["train"] == str(tmp_path / "d/train.csv")
    assert saved["teacher"]["model"] == "clipkd-tiny-teacher"
