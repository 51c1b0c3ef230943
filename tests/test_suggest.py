""""Did you mean ...?" for a misspelled config field, recipe, loss term or model name."""

import pytest

from clipkd.cli import main
from clipkd.config import ConfigError, load_config

MINIMAL = ["run_dir=r", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit", "data.format=csv",
           "data.train=x.csv", "optim.steps=3"]
BENCH = "{name: b, task: zeroshot, format: folder, path: x, batch_sise: 8}"


def test_closest_ignores_case_and_keeps_the_candidates_spelling():
    from clipkd.suggest import closest

    assert closest("vit-b-32", ["RN50", "ViT-B-32", "ViT-L-14"]) == ["ViT-B-32"]
    assert closest("lrr", ["lr", "eps", "betas"]) == ["lr"]
    assert closest("zzz", ["lr", "eps", "betas"]) == []
    assert closest("fdd", ["fd", "afd", "gd", "crd"], n=2) == ["fd", "afd"]


def test_did_you_mean_wording():
    from clipkd.suggest import did_you_mean

    assert did_you_mean("lrr", ["lr", "eps"], prefix="optim.") == "did you mean `optim.lr`?"
    assert did_you_mean("RN5", ["RN50", "RN101", "RN50x4"], n=2) == "did you mean `RN50` or `RN50x4`?"
    assert did_you_mean("a", ["ab", "ac", "ad"], n=3) == "did you mean `ab`, `ac` or `ad`?"
    assert did_you_mean("zzz", ["lr", "eps"]) == ""


def _config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(None, MINIMAL + list(overrides))
    return str(exc.value)


@pytest.mark.parametrize("override, line", [
    ("optim.lrr=1e-3", "optim.lrr: unknown field (did you mean `optim.lr`?)"),
    ("tacher.model=x", "tacher: unknown field (did you mean `teacher`?)"),
    ("student.pretraind=x", "student.pretraind: unknown field (did you mean `student.pretrained`?)"),
    ("data.batchsize=8", "data.batchsize: unknown field (did you mean `data.batch_size`?)"),
    ("checkpoint.keep=2", "checkpoint.keep: unknown field (did you mean `checkpoint.keep_last`?)"),
    ("eval.val_data={format: csv, train: v.csv, worker: 1}",
     "eval.val_data.worker: unknown field (did you mean `eval.val_data.workers`?)"),
    (f"eval.benchmarks=[{BENCH}]",
     "eval.benchmarks.0.batch_sise: unknown field (did you mean `eval.benchmarks.0.batch_size`?)"),
    ("data.bogus=1", "data.bogus: unknown field\n"),  # nothing near: no suggestion
])
def test_unknown_field_suggests_the_nearest_of_its_section(override, line):
    assert line in _config_error(override) + "\n"


def test_unknown_recipe_suggests_the_nearest():
    assert ("distill.recipe: unknown recipe 'clipdk' (did you mean `clipkd`? known: baseline, crd, fd, mfd, gd, icl, "
            "afd, clipkd, siglip, siglip-crd, siglip-fd, siglip-mfd, siglip-icl, siglip-afd, siglip-clipkd)"
            ) in _config_error("distill.recipe=clipdk")
    assert "unknown recipe 'nope' (known: baseline," in _config_error("distill.recipe=nope")


def test_unknown_recipe_in_the_library_and_cli(capsys):
    from clipkd.losses import get_recipe

    with pytest.raises(KeyError, match="unknown recipe 'MFD' \\(did you mean `mfd`\\?"):
        get_recipe("MFD")
    assert main(["smoke", "--recipe", "icll", "--steps", "1"]) == 2
    assert "unknown recipe 'icll' (did you mean `icl`?" in capsys.readouterr().err


def test_unknown_loss_term_suggests_the_nearest():
    from clipkd.losses import validate_weights

    assert ("distill.weights: unknown loss term(s) ['fdd'] (did you mean `fd`? known: afd, crd, fd, gd, icl, siglip, "
            "sigmoid_crd, task)" in _config_error("distill.weights={task: 1, fdd: 2000}"))
    with pytest.raises(ValueError, match=r"\['ilc', 'tsak', 'zzzz'\] \(did you mean `icl` for 'ilc', `task` for "
                                         r"'tsak'\? known:"):
        validate_weights({"tsak": 1, "ilc": 1, "zzzz": 1})
    with pytest.raises(ValueError, match=r"\['zzzz'\] \(known: afd,"):
        validate_weights({"task": 1, "zzzz": 1})


def test_unknown_model_suggests_the_nearest():
    from clipkd.build.checks import check_model

    assert check_model("student.model", "clipkd-tiny-vt", None, "student.pretrained") == [
        "student.model: unknown model 'clipkd-tiny-vt' (did you mean `clipkd-tiny-vit`, `clipkd-tiny-vit-64` or "
        "`clipkd-Swin-T`? see `clipkd models`)"]
    (problem,) = check_model("teacher.model", "vit-b-32", None, "teacher.pretrained")
    assert "unknown model 'vit-b-32' (did you mean `ViT-B-32`" in problem
    (problem,) = check_model("teacher.model", "lit-effnetlite0-minlm", None, "teacher.pretrained")
    assert "(did you mean `lit-effnetlite0-minilm`" in problem and problem.endswith("see `clipkd models`)")
    assert check_model("teacher.model", "no-such-model", None, "teacher.pretrained") == [
        "teacher.model: unknown model 'no-such-model' (see `clipkd models`)"]


def test_unknown_model_in_train_preflight(tmp_path, capsys):
    args = ["train", f"run_dir={tmp_path / 'r'}", "teacher.model=clipkd-tiny-teacher",
            "student.model=clipkd-tiny-mobilent", "data.format=csv", f"data.train={tmp_path}/x.csv", "optim.steps=1"]
    assert main(args) == 2
    assert "student.model: unknown model 'clipkd-tiny-mobilent' (did you mean `clipkd-tiny-mobilenet`" in \
        capsys.readouterr().err
