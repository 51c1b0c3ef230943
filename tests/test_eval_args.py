"""`clipkd eval` argument errors, table-driven: exit 2, one clear line, no traceback, no model built."""

import json
import re

import pytest
from PIL import Image
from safetensors.torch import save_file

from clipkd.cli import main
from conftest import STUDENT, TEACHER, make_encoder

D = "{d}"  # stands for the folder of the fixture files
ZS = f"folder:{D}/val"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image folder, run folders (without checkpoints, invalid, with a missing teacher), broken files."""
    from clipkd.config import dump_config, load_config
    from clipkd.data.synthetic import write_csv

    d = tmp_path_factory.mktemp("evalargs")
    for name, rgb in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
        (d / "val" / name).mkdir(parents=True)
        Image.new("RGB", (20, 20), rgb).save(d / "val" / name / "0.png")
    csv = write_csv(d / "pairs", 4, size=32)
    base = [f"run_dir={d}/nockpt", f"teacher.model={TEACHER}", f"student.model={STUDENT}", "data.format=csv",
            f"data.train={csv}", "optim.steps=1"]
    (d / "nockpt").mkdir()
    (d / "nockpt" / "config.yaml").write_text(dump_config(load_config(None, base)))
    (d / "badteacher").mkdir()
    (d / "badteacher" / "config.yaml").write_text(
        dump_config(load_config(None, base + [f"teacher.pretrained={d}/gone.pt"])))
    (d / "badrun").mkdir()
    (d / "badrun" / "config.yaml").write_text((d / "nockpt" / "config.yaml").read_text() + "bogus: 1\n")
    (d / "empty").mkdir()
    save_file({k: v.contiguous() for k, v in make_encoder(STUDENT).model.state_dict().items()},
              str(d / "student.safetensors"))
    (d / "bad.json").write_text("{embed_dim: 64,")
    (d / "nocols.csv").write_text("path,label\nx.jpg,0\n")
    (d / "bad.yaml").write_text("- {name: a, task: [\n")
    (d / "badspec.yaml").write_text(json.dumps({"benchmarks": [{"name": "a", "task": "zeroshot", "format": "folder",
                                                                "path": "val", "bogus": 1}]}))
    (d / "relative.yaml").write_text(json.dumps([{"name": "a", "task": "zeroshot", "format": "folder",
                                                  "path": "val", "classnames": "none.txt"}]))
    return d


TABLE = [
    # the model
    (["--model", "no-such-model", "--zeroshot", ZS], "--model: unknown model 'no-such-model'"),
    (["--model", f"{D}/bad.json", "--zeroshot", ZS], "bad.json is not valid JSON"),
    (["--model", STUDENT, "--pretrained", f"{D}/none.pt", "--zeroshot", ZS], "--pretrained: checkpoint file not found"),
    (["--model", STUDENT, "--pretrained", "no_such_tag", "--zeroshot", ZS],
     "--pretrained: 'no_such_tag' is neither a checkpoint file nor a pretrained tag"),
    (["--model", "ViT-B-32", "--pretrained", "openai", "--zeroshot", ZS],
     "the hub is unreachable (HF_HUB_OFFLINE is set) and they are not in the local cache; download them once with "
     "network access, or pass a local checkpoint file as --pretrained"),
    (["--model", TEACHER, "--pretrained", f"{D}/student.safetensors", "--zeroshot", ZS],
     "does not fit the clipkd-tiny-teacher architecture"),
    # the run
    (["--run", f"{D}/none", "--zeroshot", ZS], "--run: folder not found"),
    (["--run", f"{D}/empty", "--zeroshot", ZS], "not a clipkd run folder (no config.yaml)"),
    (["--run", f"{D}/nockpt", "--zeroshot", ZS], "no checkpoint in"),
    (["--run", f"{D}/nockpt", "--checkpoint", f"{D}/none", "--zeroshot", ZS], "not a clipkd checkpoint folder"),
    (["--run", f"{D}/badrun", "--zeroshot", ZS], "config.yaml: invalid config: bogus: unknown field"),
    (["--run", f"{D}/badteacher", "--side", "teacher", "--zeroshot", ZS],
     "teacher.pretrained: checkpoint file not found"),
    # benchmark arguments
    (["--model", STUDENT], "nothing to evaluate"),
    (["--model", STUDENT, "--zeroshot", "nocolon"], "--zeroshot 'nocolon': expected FORMAT:PATH"),
    (["--model", STUDENT, "--zeroshot", f"parquet:{D}/val"], "--zeroshot parquet:"),
    (["--model", STUDENT, "--retrieval", f"folder:{D}/val"], "not available for task 'retrieval'"),
    (["--model", STUDENT, "--zeroshot", f"folder:{D}/none"], "folder not found"),
    (["--model", STUDENT, "--retrieval", f"karpathy:{D}/none.json"], "Karpathy split file not found"),
    (["--model", STUDENT, "--zeroshot", f"csv:{D}/nocols.csv"], "no column 'filepath'"),
    (["--model", STUDENT, "--zeroshot", ZS, "--classnames", f"{D}/none.txt"], "--classnames: file not found"),
    (["--model", STUDENT, "--zeroshot", ZS, "--templates", f"{D}/none.txt"], "--templates: file not found"),
    (["--model", STUDENT, "--zeroshot", ZS, "--root", f"{D}/none"], "--root: folder not found"),
    (["--model", STUDENT, "--benchmarks", f"{D}/none.yaml"], "--benchmarks: file not found"),
    (["--model", STUDENT, "--benchmarks", f"{D}/bad.yaml"], "--benchmarks: not valid YAML"),
    (["--model", STUDENT, "--benchmarks", f"{D}/badspec.yaml"], "benchmarks.0.bogus: unknown field"),
    (["--model", STUDENT, "--benchmarks", f"{D}/relative.yaml"], f"classnames: file not found: {D}/none.txt"),
    # numbers and combinations
    (["--model", STUDENT, "--zeroshot", ZS, "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["--model", STUDENT, "--zeroshot", ZS, "--workers", "-1"], "--workers: must be >= 0, got -1"),
    (["--model", STUDENT, "--zeroshot", ZS, "--device", "tpu"], "--device: expected auto, cpu or cuda"),
    (["--model", STUDENT, "--diagnostics"], "--diagnostics needs --run"),
    (["--model", STUDENT, "--zeroshot", ZS, "--side", "teacher"], "--side needs --run"),
    (["--model", STUDENT, "--zeroshot", ZS, "--checkpoint", f"{D}/x"], "--checkpoint needs --run"),
    (["--run", f"{D}/nockpt", "--zeroshot", ZS, "--pretrained", "x.pt"], "--pretrained goes with --model"),
    (["--model", STUDENT, "--zeroshot", ZS, "--pairs", f"csv:{D}/pairs/data.csv"], "--pairs needs --diagnostics"),
    (["--run", f"{D}/nockpt", "--diagnostics"], "--diagnostics needs held-out pairs"),
    (["--run", f"{D}/nockpt", "--diagnostics", "--pairs", "nocolon"], "--pairs 'nocolon': expected FORMAT:PATH"),
    (["--run", f"{D}/nockpt", "--diagnostics", "--pairs", f"folder:{D}/val"], "--pairs folder:"),
    (["--run", f"{D}/nockpt", "--diagnostics", "--pairs", f"csv:{D}/none.csv"], "--pairs: CSV file not found"),
    (["--run", f"{D}/nockpt", "--diagnostics", "--pairs", f"csv:{D}/pairs/data.csv"], "no checkpoint in"),
]


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Any model construction fails the test; the Hugging Face cache is empty."""
    import huggingface_hub.constants

    import clipkd.engine.builders
    import clipkd.models.factory
    import clipkd.models.open_clip_adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were rejected")

    for module, name in ((clipkd.engine.builders, "build_encoder"), (clipkd.engine.builders, "create_encoder"),
                         (clipkd.engine.builders, "build_distiller_from_config"),
                         (clipkd.models.factory, "create_encoder"),
                         (clipkd.models.factory, "create_open_clip_encoder"),
                         (clipkd.models.open_clip_adapter, "create_open_clip_encoder"),
                         (clipkd.models.open_clip_adapter.open_clip, "create_model_and_transforms")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_table_is_large_enough():
    assert len(TABLE) >= 25


@pytest.mark.parametrize("argv, message", TABLE, ids=[m[:50] for _, m in TABLE])
def test_bad_eval_arguments(argv, message, files, tmp_path, no_models, capsys):
    args = [a.replace(D, str(files)) for a in argv]
    assert main(["eval", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"(WARNING|INFO) ", line)]
    assert len(lines) == 1 and lines[0].startswith("clipkd: error: "), err
    assert message.replace(D, str(files)) in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
