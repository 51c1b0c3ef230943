"""Markdown tables and bar charts from clip_benchmark-style result files."""

import json

import pytest

from clipkd.eval.report import bar_chart, load_results, markdown_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(model, dataset, metrics, pretrained=None, task="zeroshot_classification"):
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics}


RESULTS = [
    result("ViT-L-14", "cifar10", {"acc1": 0.9625, "acc5": 0.999}, pretrained="laion2b"),
    result("ViT-L-14", "mscoco_captions", {"image_retrieval_recall@1": 0.5, "text_retrieval_recall@1": 0.7},
           pretrained="laion2b", task="zeroshot_retrieval"),
    result("student-fd", "cifar10", {"acc1": 0.8625, "acc5": 0.98}),
    result("student-fd", "mscoco_captions", {"image_retrieval_recall@1": 0.31234, "text_retrieval_recall@1": 0.4},
           task="zeroshot_retrieval"),
    result("student-baseline", "cifar10", {"acc1": 0.8, "acc5": 0.97}),  # no retrieval result
]


def write_files(tmp_path, results=RESULTS):
    paths = []
    for i, r in enumerate(results):
        path = tmp_path / f"result_{i}.json"
        path.write_text(json.dumps(r))
        paths.append(path)
    return paths


def test_load_results_roundtrip(tmp_path):
    paths = write_files(tmp_path)
    loaded = load_results([str(paths[0])] + paths[1:])
    assert [r["model"] for r in loaded] == [r["model"] for r in RESULTS]
    assert loaded[0]["metrics"] == {"acc1": 0.9625, "acc5": 0.999}


def test_load_results_missing_key_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"dataset": "cifar10", "model": "m", "pretrained": None, "task": "x"}))
    with pytest.raises(ValueError, match=r"broken\.json.*metrics"):
        load_results([bad])


def test_load_results_bad_json_and_bad_metric(tmp_path):
    bad = tmp_path / "garbage.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"garbage\.json"):
        load_results([bad])
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(result("m", "d", {"acc1": "high"})))
    with pytest.raises(ValueError, match=r"odd\.json.*acc1"):
        load_results([odd])


def test_markdown_table_content():
    lines = markdown_table(RESULTS).strip().splitlines()
    assert lines[0] == ("| Model | cifar10 acc1 | cifar10 acc5 | mscoco_captions image_retrieval_recall@1 "
                        "| mscoco_captions text_retrieval_recall@1 |")
    assert lines[1].count("|") == 6
    assert lines[2] == "| ViT-L-14 (laion2b) | 96.25 | 99.90 | 50.00 | 70.00 |"
    assert lines[3] == "| student-fd | 86.25 | 98.00 | 31.23 | 40.00 |"
    assert lines[4] == "| student-baseline | 80.00 | 97.00 | – | – |"
    assert len(lines) == 5


def test_markdown_table_metric_filter_and_order():
    table = markdown_table(RESULTS, metrics=["text_retrieval_recall@1", "acc1"])
    lines = table.strip().splitlines()
    assert lines[0] == "| Model | cifar10 acc1 | mscoco_captions text_retrieval_recall@1 |"
    assert lines[4] == "| student-baseline | 80.00 | – |"


def test_markdown_table_empty_raises():
    with pytest.raises(ValueError):
        markdown_table([])


def test_bar_chart_writes_png(tmp_path):
    out = bar_chart(RESULTS, tmp_path / "sub" / "chart.png", title="test")
    data = out.read_bytes()
    assert out.exists() and len(data) > 100
    assert data[:8] == PNG_MAGIC


def test_write_report(tmp_path):
    md, png = write_report(write_files(tmp_path), tmp_path / "out")
    assert md.name == "report.md" and png.name == "report.png"
    assert md.read_text(encoding="utf-8") == markdown_table(RESULTS)
    assert png.read_bytes()[:8] == PNG_MAGIC
