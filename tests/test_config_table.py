"""Malformed configs, table-driven: `clipkd train` exits 2 before any model is built, naming field and problem."""

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from clipkd.cli import main
from conftest import STUDENT, TEACHER, make_encoder

D = "{d}"  # stands for the folder of the fixture files below


@pytest.fixture(scope="module")
def files(module_tmp):
    """A good CSV, checkpoints that do and do not fit the teacher, broken model configs and CSVs."""
    from clipkd.data.synthetic import write_csv

    d = module_tmp("files")
    write_csv(d / "csv", 4, size=32)
    teacher = make_encoder(TEACHER).model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.items()}}, d / "teacher.pt")
    renamed = {("visual.extra" if k == "visual.proj" else k): v for k, v in teacher.items()}
    torch.save(renamed, d / "renamed.pt")
    student = make_encoder(STUDENT).model.state_dict()
    save_file({k: v.contiguous() for k, v in student.items()}, str(d / "student.safetensors"))
    (d / "garbage.pt").write_bytes(b"not a checkpoint")
    (d / "bad.json").write_text("{embed_dim: 64,")
    (d / "incomplete.json").write_text(json.dumps({"embed_dim": 64}))
    arch = json.loads(json.dumps({"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64,
                                                                  "patch_size": 8, "no_such_option": 3},
                                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64,
                                               "heads": 2, "layers": 1}}))
    (d / "badarch.json").write_text(json.dumps(arch))
    (d / "nocols.csv").write_text("path,caption\nx.jpg,a cat\n")
    (d / "retrieval.csv").write_text("filepath,text\nx.jpg,a cat\n")
    return d


def _bench(**fields) -> str:
    spec = {"name": "b", "task": "zeroshot", "format": "folder", "path": f"{D}/csv", **fields}
    return "eval.benchmarks=" + json.dumps([spec])


TABLE = [
    # unknown keys, at every level
    (["bogus=1"], "bogus", "unknown field"),
    (["teacher.bogus=1"], "teacher.bogus", "unknown field"),
    (["teacher=[{model: clipkd-tiny-teacher, wieght: 2}]"], "teacher.0.wieght", "did you mean `teacher.0.weight`"),
    (["teacher=[{model: clipkd-tiny-teacher, weight: 0}]"], "teacher.0.weight", "greater than 0"),
    (["teacher=[{model: clipkd-tiny-teacher}, {model: no-such-model}]"], "teacher.1.model",
     "unknown model 'no-such-model'"),
    (["student.bogus=1"], "student.bogus", "unknown field"),
    (["distill.bogus=1"], "distill.bogus", "unknown field"),
    (["data.bogus=1"], "data.bogus", "unknown field"),
    (["optim.bogus=1"], "optim.bogus", "unknown field"),
    (["checkpoint.bogus=1"], "checkpoint.bogus", "unknown field"),
    (["logging.bogus=1"], "logging.bogus", "unknown field"),
    (["eval.bogus=1"], "eval.bogus", "unknown field"),
    (["eval.val_data={format: csv, train: {d}/csv/data.csv, bogus: 1}"], "eval.val_data.bogus", "unknown field"),
    ([_bench(bogus=1)], "eval.benchmarks.0.bogus", "unknown field"),
    (["distributed.bogus=1"], "distributed.bogus", "unknown field"),
    # wrong types and shapes
    (["seed=abc"], "seed", "valid integer"),
    (["data.batch_size=many"], "data.batch_size", "valid integer"),
    (["logging.tensorboard=maybe"], "logging.tensorboard", "valid boolean"),
    (["optim.lr=fast"], "optim.lr", "valid number"),
    (["teacher=3"], "teacher", "valid dictionary"),
    (["data.train=3"], "data.train", "a valid string or a valid list"),
    (["student.image_mean=[0.5, 0.5]"], "student.image_mean", "too few items"),
    (["data.train=[a, b"], "override 'data.train=[a, b'", "not valid YAML"),
    (["data.train=[a.csv, b.csv]"], "data.train", "a CSV source takes one file path"),
    # out-of-range and non-finite values
    (["distill.weights={task: -1}"], "distill.weights", ">= 0"),
    (["distill.weights={task: .nan}"], "distill.weights.task", "finite number"),
    (["optim.lr=.nan"], "optim.lr", "finite number"),
    (["optim.lr=.inf"], "optim.lr", "finite number"),
    (["optim.grad_clip=-1"], "optim.grad_clip", "greater than 0"),
    (["distill.mask_ratio=1.0"], "distill.mask_ratio", "less than 1"),
    (["distill.mask_ratio=-0.1"], "distill.mask_ratio", "greater than or equal to 0"),
    (["data.batch_size=0"], "data.batch_size", "greater than 0"),
    (["optim.accum_steps=0"], "optim.accum_steps", "greater than or equal to 1"),
    (["optim.steps=null"], "optim", "set optim.epochs or optim.steps"),
    (["data.crop_scale=[0.9, 0.5]"], "data.crop_scale", "0 < low <= high <= 1"),
    # unknown names
    (["distill.recipe=nope"], "distill.recipe", "unknown recipe 'nope'"),
    (["distill.weights={task: 1, zz: 2}"], "distill.weights", "unknown loss term"),
    (["teacher.model=no-such-model"], "teacher.model", "unknown model 'no-such-model'"),
    (["precision=fp8"], "precision", "'fp32'"),
    # models and weights, checked without building them
    (["teacher.pretrained={d}/student.safetensors"], "teacher.pretrained",
     "does not fit the clipkd-tiny-teacher architecture (shape (checkpoint vs model)"),
    (["teacher.pretrained={d}/renamed.pt"], "teacher.pretrained", "missing 1: visual.proj; unexpected 1: visual.extra"),
    (["teacher.pretrained={d}/garbage.pt"], "teacher.pretrained", "cannot read checkpoint"),
    (["teacher.pretrained={d}/none.pt"], "teacher.pretrained", "checkpoint file not found"),
    (["teacher.pretrained=no_such_tag"], "teacher.pretrained", "neither a checkpoint file nor a pretrained tag"),
    (["teacher.model=ViT-B-32", "teacher.pretrained=openai"], "teacher.pretrained",
     "the hub is unreachable (HF_HUB_OFFLINE is set)"),
    (["student.model={d}/bad.json"], "student.model", "bad.json is not valid JSON"),
    (["student.model={d}/incomplete.json"], "student.model", "not an open_clip model config (missing"),
    (["student.model={d}/badarch.json"], "student.model", "open_clip cannot build it"),
    (["student.model={d}/none.json"], "student.model", "model config file not found"),
    # data
    (["data.train={d}/none.csv"], "data.train", "CSV file not found"),
    (["data.train={d}/nocols.csv"], "data.train", "no column 'filepath' (data.csv_img_key), 'title'"),
    (["data.csv_separator=;"], "data.train", "no column 'filepath'"),
    (["data.root={d}/none"], "data.root", "folder not found"),
    (["data.format=webdataset", "data.train={d}/shard-{000..002}.tar"], "data.train", "3 of 3 shards not found"),
    (["eval.val_data={format: csv, train: {d}/none.csv}"], "eval.val_data.train", "CSV file not found"),
    (["distill.teacher_cache={d}/none"], "distill.teacher_cache", "folder not found (make it with `clipkd reinforce"),
    (["distill.cache_views=0"], "distill.cache_views", "greater than or equal to 1"),
    (["distill.view_order=shuffled"], "distill.view_order", "'cycle' or 'random'"),
    ([_bench(path=f"{D}/none")], "eval.benchmarks.0.path", "folder not found"),
    ([_bench(classnames=f"{D}/none.txt")], "eval.benchmarks.0.classnames", "file not found"),
    ([_bench(templates=f"{D}/none.txt")], "eval.benchmarks.0.templates", "file not found"),
    ([_bench(task="retrieval", format="karpathy", path=f"{D}/none.json")], "eval.benchmarks.0.path",
     "Karpathy split file not found"),
    ([_bench(task="retrieval", format="csv", path=f"{D}/retrieval.csv")], "eval.benchmarks.0.path",
     "no column 'title' (eval.benchmarks.0.caption_key)"),
    ([_bench(task="retrieval", format="folder")], "eval.benchmarks.0", "not available for task 'retrieval'"),
]


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Any model construction fails the test; the Hugging Face cache is empty."""
    import huggingface_hub.constants

    import clipkd.build.models
    import clipkd.models.factory
    import clipkd.models.open_clip_adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the config was rejected")

    monkeypatch.setattr(clipkd.build.models, "build_encoder", refuse)
    monkeypatch.setattr(clipkd.build.models, "create_encoder", refuse)
    monkeypatch.setattr(clipkd.models.factory, "create_open_clip_encoder", refuse)
    monkeypatch.setattr(clipkd.models.open_clip_adapter.open_clip, "create_model_and_transforms", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _base(run_dir, d) -> list[str]:
    return [f"run_dir={run_dir}", "device=cpu", f"teacher.model={TEACHER}", f"student.model={STUDENT}",
            "data.format=csv", f"data.train={d}/csv/data.csv", "optim.steps=1", "data.workers=0"]


def _override_keys(items):
    return {item.split("=", 1)[0] for item in items}


def test_table_is_large_enough():
    assert len(TABLE) >= 25


@pytest.mark.parametrize("overrides, field, message", TABLE, ids=[f"{c[1]}: {c[2][:40]}" for c in TABLE])
def test_malformed_config_is_rejected_before_any_model(overrides, field, message, files, tmp_path, no_models,
                                                       capsys):
    given = [o.replace(D, str(files)) for o in overrides]
    base = [b for b in _base(tmp_path / "run", files) if b.split("=", 1)[0] not in _override_keys(given)]
    assert main(["train", *base, *given]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{field}: " in err or f"{field} " in err, err
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_good_config_passes_preflight(files, tmp_path, no_models):
    """The baseline of the table is valid: only the malformed part is reported (checkpoint that fits included)."""
    from clipkd.config import load_config
    from clipkd.build.preflight import preflight

    cfg = load_config(None, _base(tmp_path / "run", files) + [f"teacher.pretrained={files}/teacher.pt",
                                                              _bench().replace(D, str(files))])
    preflight(cfg)


def test_yaml_file_values_are_checked_like_overrides(files, tmp_path, no_models, capsys):
    """NaN and unknown nested keys in the file itself; relative paths there name files beside it."""
    raw = {"run_dir": "run", "teacher": {"model": TEACHER, "pretrained": "missing.safetensors"},
           "student": {"model": STUDENT}, "data": {"format": "csv", "train": str(files / "csv" / "data.csv")},
           "optim": {"steps": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(tmp_path / "run.yaml")]) == 2
    assert f"teacher.pretrained: checkpoint file not found: {tmp_path / 'missing.safetensors'}" in \
        capsys.readouterr().err
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw) + "logging: {every_steps: 1, bogus: 2}\n")
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump({**raw, "optim": {"steps": 1, "lr": float("nan")}}))
    assert "lr: .nan" in (tmp_path / "nan.yaml").read_text()
    assert main(["train", "-c", str(tmp_path / "run.yaml")]) == 2
    assert "logging.bogus: unknown field" in capsys.readouterr().err
    assert main(["train", "-c", str(tmp_path / "nan.yaml")]) == 2
    assert "optim.lr: Input should be a finite number" in capsys.readouterr().err
