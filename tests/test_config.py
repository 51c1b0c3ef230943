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
