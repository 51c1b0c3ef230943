"""Names of the benchmarks given on the command line (--zeroshot / --retrieval FORMAT:PATH): the file or folder
name, with its parent folder's before it while the name is a generic one (``data``, ``test``, ``val``, ...), so
that ``cifar10/data.csv`` is ``cifar10-data``, not ``data``; the same wherever eval is run from."""

import json

import pytest

from clipkd.cli import main
from clipkd.commands.eval.specs import GENERIC_NAMES, benchmark_name, collect_specs
from conftest import STUDENT
from test_eval import COLOURS


@pytest.mark.parametrize("path, fmt, name", [
    ("/d/cifar10/data.csv", "csv", "cifar10-data"),  # the issue: not "data"
    ("/d/coco/test.csv", "csv", "coco-test"),
    ("/d/datasets/cifar10/test/data.csv", "csv", "cifar10-test-data"),  # parents until one says what it is
    ("/d/flowers102.csv", "csv", "flowers102"),  # a telling name stays as it was
    ("/d/imagenet/val", "folder", "imagenet-val"),
    ("/d/imagenet/val/", "folder", "imagenet-val"),
    ("/d/colours", "folder", "colours"),
    ("/d/fmnist-v1.0", "folder", "fmnist-v1.0"),  # a folder's name is not a file name with a suffix
    ("/d/dataset_flickr30k.json", "karpathy", "dataset_flickr30k"),
    ("/d/wds/imagenet-val-{000000..000063}.tar", "webdataset", "imagenet-val"),  # brace ranges dropped
    ("/d/fmnist/shard-{00000..00002}.tar", "webdataset", "fmnist-shard"),
    ("https://host/laion/{00000..00099}.tar", "webdataset", "laion"),
    ("/data.csv", "csv", "data"),  # nothing above it
])
def test_names(path, fmt, name):
    assert benchmark_name(path, fmt, set()) == name


def test_generic_names_are_lowercase_words():
    assert {"data", "test", "val", "train", "images"} <= GENERIC_NAMES
    assert all(n == n.lower() and n.isidentifier() for n in GENERIC_NAMES)


def test_a_relative_path_is_named_as_the_same_path_given_absolutely(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    monkeypatch.chdir(tmp_path / "cifar10")
    assert benchmark_name("data.csv", "csv", set()) == benchmark_name(str(tmp_path / "cifar10" / "data.csv"),
                                                                       "csv", set()) == "cifar10-data"


def test_names_taken_get_more_of_the_path_then_a_number():
    taken = {"cifar10-data"}
    assert benchmark_name("/x/a/cifar10/data.csv", "csv", taken) == "a-cifar10-data"
    assert benchmark_name("/cifar10/data.csv", "csv", taken) == "cifar10-data-2"


def _eval_args(argv):
    from clipkd.cli import build_parser

    return build_parser().parse_args(["eval", "--model", STUDENT, *argv])


def test_cli_csv_benchmark_is_named_by_its_folder_and_the_result_file_too(tmp_path, monkeypatch):
    from PIL import Image

    for task, data in (("zeroshot", "cifar10"), ("retrieval", "coco")):
        (tmp_path / data / "img").mkdir(parents=True)
        rows = ["filepath,label" if task == "zeroshot" else "filepath,title"]
        for i, (colour, rgb) in enumerate(COLOURS.items()):
            Image.new("RGB", (20, 20), rgb).save(tmp_path / data / "img" / f"{colour}.png")
            rows.append(f"img/{colour}.png,{i if task == 'zeroshot' else 'a ' + colour + ' square'}")
        (tmp_path / data / "data.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    specs = collect_specs(_eval_args(["--zeroshot", "csv:cifar10/data.csv", "--retrieval", "csv:coco/data.csv"]))
    assert [s.name for s in specs] == ["cifar10-data", "coco-data"]
    out = tmp_path / "out"
    assert main(["eval", "--model", STUDENT, "--zeroshot", "csv:cifar10/data.csv", "--out", str(out)]) == 0
    [result] = list(out.glob("*.json"))
    assert result.name.startswith("zeroshot_cifar10-data_clipkd-tiny-vit-")
    assert json.loads(result.read_text())["dataset"] == "cifar10-data"
