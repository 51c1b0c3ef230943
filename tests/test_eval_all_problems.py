"""`clipkd eval` with several bad flags at once reports every problem in one error line (not the first alone), before
any model is built."""

import re

import pytest

from clipkd.cli import main
from conftest import STUDENT
from test_eval_args import files, no_models  # noqa: F401  (fixtures)


def _error_line(argv, tmp_path, capsys) -> str:
    assert main(["eval", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"(WARNING|INFO) ", line)]
    assert len(lines) == 1 and lines[0].startswith("clipkd: error: "), err
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_every_bad_flag_is_reported_in_one_error(files, tmp_path, no_models, capsys):  # noqa: F811
    d = files
    line = _error_line(["--model", STUDENT, "--zeroshot", f"folder:{d}/none", "--zeroshot", f"folder:{d}/val",
                        "--zeroshot", "nocolon", "--templates", f"{d}/noplaceholder.txt", "--caption-key", "text",
                        "--device", "tpu", "--batch-size", "0", "--workers", "-1"], tmp_path, capsys)
    for part in (f"--zeroshot folder:{d}/none: folder not found: {d}/none",  # a missing --zeroshot folder
                 f"--templates: {d}/noplaceholder.txt: template(s) without a '{{}}' placeholder",  # a bad file
                 "--caption-key applies to none of the requested benchmarks",  # a flag for no benchmark
                 "--device: expected auto, cpu or cuda",  # a bad --device
                 "--batch-size: must be >= 1, got 0", "--workers: must be >= 0, got -1",
                 "--zeroshot 'nocolon': expected FORMAT:PATH"):
        assert part in line, part
    assert line.count("template(s) without") == 1  # said once, not once per benchmark
    assert "batch_size" not in line  # the bad number is said once, by its flag


def test_flag_combinations_and_the_model_are_reported_together(files, tmp_path, no_models, capsys):  # noqa: F811
    d = files
    line = _error_line(["--model", "no-such-model", "--zeroshot", f"folder:{d}/val", "--side", "teacher",
                        "--checkpoint", f"{d}/x", "--pairs", "csv:p.csv", "--classnames", f"{d}/none.txt",
                        "--cache-dir", f"{d}/afile"], tmp_path, capsys)
    for part in ("--side needs --run", "--checkpoint needs --run", "--pairs needs --diagnostics",
                 "--model: unknown model 'no-such-model'", "--classnames: file not found",
                 f"--cache-dir: {d}/afile is a file, not a folder"):
        assert part in line, part


@pytest.mark.parametrize("argv, parts", [
    (["--model", STUDENT, "--diagnostics", "--zeroshot", "folder:{d}/val", "--device", "tpu"],
     ["--diagnostics needs --run", "--device: expected auto"]),
    (["--model", STUDENT, "--device", "tpu"], ["nothing to evaluate", "--device: expected auto"]),
])
def test_problems_found_before_the_others_do_not_hide_them(files, tmp_path, no_models, capsys,  # noqa: F811
                                                            argv, parts):
    line = _error_line([a.replace("{d}", str(files)) for a in argv], tmp_path, capsys)
    for part in parts:
        assert part in line, part
