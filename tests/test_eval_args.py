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
def files(module_tmp):
    """An image folder, run folders (without checkpoints, invalid, with a missing teacher), broken files."""
    from clipkd.config import dump_config, load_config
    from clipkd.data.synthetic import write_csv

    d = module_tmp("evalargs")
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
    (d / "labels.csv").write_text("filepath,label\nval/red/0.png,0\nval/blue/0.png,1\n")
    (d / "badlabel.csv").write_text("filepath,label\nval/red/0.png,red\n")
    (d / "pairs.csv").write_text("filepath,title\nval/red/0.png,a red square\n")
    (d / "noplaceholder.txt").write_text("a photo\n")
    (d / "twice.yaml").write_text(json.dumps([{"name": "a", "task": "zeroshot", "format": "folder", "path": "val"},
                                              {"name": "a", "task": "zeroshot", "format": "folder", "path": "val"}]))
    (d / "afile").write_text("not a folder")
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
     "network access, or pass a local checkpoint file as --pretrained (e.g. /path/to/weights.safetensors, or a "
     ".pt/.bin file)"),
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
    (["--model", STUDENT, "--zeroshot", f"csv:{D}/labels.csv", "--root", f"{D}/none"], "--root: folder not found"),
    (["--model", STUDENT, "--zeroshot", ZS, "--templates", f"{D}/noplaceholder.txt"],
     "template(s) without a '{}' placeholder"),
    (["--model", STUDENT, "--zeroshot", f"csv:{D}/badlabel.csv"], "label 'label' must be a class index"),
    (["--model", STUDENT, "--zeroshot", f"csv:{D}/labels.csv", "--label-key", "cls"], "no column 'cls' (--label-key)"),
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--caption-key", "text"],
     "no column 'text' (--caption-key)"),
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--image-key", "img"], "no column 'img' (--image-key)"),
    (["--model", STUDENT, "--benchmarks", f"{D}/twice.yaml"],
     "benchmarks.1.name: 'a' is also the name of benchmarks.0"),
    # data flags that apply to none of the requested benchmarks
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--label-key", "cls"],
     "--label-key applies to none of the requested benchmarks"),
    (["--model", STUDENT, "--zeroshot", ZS, "--label-key", "cls"], "--label-key applies to none of the requested"),
    (["--model", STUDENT, "--zeroshot", f"csv:{D}/labels.csv", "--caption-key", "text"],
     "--caption-key applies to none of the requested benchmarks"),
    (["--model", STUDENT, "--zeroshot", ZS, "--image-key", "png"], "--image-key applies to none of the requested"),
    (["--model", STUDENT, "--zeroshot", ZS, "--split", "val"], "--split applies to none of the requested benchmarks"),
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--split", "val"], "--split applies to none"),
    (["--model", STUDENT, "--zeroshot", ZS, "--first-caption-only"], "--first-caption-only applies to none"),
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--classnames", "imagenet"],
     "--classnames applies to none of the requested benchmarks"),
    (["--model", STUDENT, "--retrieval", f"csv:{D}/pairs.csv", "--templates", "imagenet"],
     "--templates applies to none of the requested benchmarks"),
    (["--model", STUDENT, "--zeroshot", ZS, "--root", f"{D}/val"], "--root applies to none of the requested"),
    (["--model", STUDENT, "--benchmarks", f"{D}/relative.yaml", "--label-key", "cls"],
     "a --benchmarks file sets 'label_key' in each benchmark"),
    # outputs
    (["--model", STUDENT, "--zeroshot", ZS, "--cache-dir", f"{D}/afile"], "--cache-dir: "
     f"{D}/afile is a file, not a folder"),
    (["--model", STUDENT, "--zeroshot", ZS, "--cache-dir", f"{D}/afile/sub"], "--cache-dir: cannot create"),
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
    (["--model", STUDENT, "--zeroshot", ZS, "--side", "student"], "--side needs --run"),
    (["--run", f"{D}/nockpt", "--side", "teacher", "--checkpoint", f"{D}/x", "--zeroshot", ZS],
     "with --side teacher the weights come from the run's config"),
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

    import clipkd.build.checks
    import clipkd.build.models
    import clipkd.models.factory
    import clipkd.models.open_clip_adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were rejected")

    for module, name in ((clipkd.build.models, "build_encoder"), (clipkd.build.models, "create_encoder"),
                         (clipkd.build.models, "build_distiller_from_config"),
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


def _eval_args(argv: list[str]):
    from clipkd.cli import build_parser

    return build_parser().parse_args(["eval", "--model", STUDENT, *argv])


def test_help_states_effective_defaults(capsys):
    from clipkd.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    out = capsys.readouterr().out
    # each option's paragraph: from its line ("  --flag ...") to the next option's, lines re-joined
    paragraphs = {m.group(1): " ".join(m.group(0).split())
                  for m in re.finditer(r"^  (--[\w-]+).*?(?=^  -|\Z)", out, re.M | re.S)}
    assert "(default: '{}', i.e. the bare class name)" in paragraphs["--templates"]
    for flag, default in (("--label-key", "label"), ("--image-key", "filepath"), ("--caption-key", "title"),
                          ("--split", "test"), ("--side", "student")):
        assert f"(default: {default})" in paragraphs[flag], (flag, paragraphs[flag])


def test_help_defaults_are_the_benchmark_spec_defaults():
    """--help says the defaults that apply: those of a benchmark spec, which the specs get when a flag is absent."""
    from clipkd.config import BenchmarkSpec
    from clipkd.commands.eval.args import DEFAULTS

    fields = BenchmarkSpec.model_fields
    assert {k: fields[k].default for k in ("label_key", "image_key", "caption_key", "split")} == \
        {k: DEFAULTS[k] for k in ("label_key", "image_key", "caption_key", "split")}


def test_eval_flags_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, clipkd.commands.eval.args; heavy = [m for m in ('torch', 'PIL', 'open_clip', 'numpy') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_data_flags_reach_the_benchmarks_they_apply_to(files):
    """--image-key/--label-key/--caption-key/--root/--split/--first-caption-only go to the specs they apply to;
    a flag not given leaves the spec's default."""
    from clipkd.commands.eval.specs import collect_specs

    d = str(files)
    (files / "custom.csv").write_text("img,cls\nval/red/0.png,0\n")
    (files / "custom_pairs.csv").write_text("img,text\nval/red/0.png,a red square\n")
    specs = collect_specs(_eval_args(["--zeroshot", f"csv:{d}/custom.csv", "--zeroshot", f"folder:{d}/val",
                                      "--retrieval", f"csv:{d}/custom_pairs.csv", "--image-key", "img",
                                      "--label-key", "cls", "--caption-key", "text", "--root", d,
                                      "--first-caption-only"]))
    zs_csv, zs_folder, rt_csv = specs
    assert (zs_csv.image_key, zs_csv.label_key, zs_csv.root) == ("img", "cls", d)
    assert (zs_folder.image_key, zs_folder.label_key, zs_folder.root) == ("filepath", "label", None)
    assert (rt_csv.image_key, rt_csv.caption_key, rt_csv.root, rt_csv.first_caption_only) == ("img", "text", d, True)
    assert rt_csv.split == "test"
    plain = collect_specs(_eval_args(["--zeroshot", f"csv:{d}/labels.csv", "--retrieval", f"csv:{d}/pairs.csv"]))
    assert [(s.image_key, s.label_key, s.caption_key, s.first_caption_only) for s in plain] == \
        [("filepath", "label", "title", False)] * 2


def test_benchmarks_of_the_same_name_get_distinct_names(files, tmp_path):
    """Two --zeroshot folders both called `colours` must not share a result file or a table column; folders called
    `val` (a generic name: tests/test_eval_names.py) are named with their parent's name."""
    from clipkd.commands.eval.specs import collect_specs

    for parent in ("a", "b"):
        for name in ("val", "colours"):
            (tmp_path / parent / name / "red").mkdir(parents=True)
    specs = collect_specs(_eval_args([f"--zeroshot=folder:{tmp_path}/{p}/{n}" for n in ("colours", "val")
                                      for p in ("a", "b")]))
    assert [s.name for s in specs] == ["colours", "b-colours", "a-val", "b-val"]
