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


LONG = "imagenet1k_zeroshot_validation_with_a_very_long_benchmark_name"


def _long_results(n_datasets=6):
    out = []
    for model in ("student-baseline-run-with-a-long-name", "student-clipkd-run-with-a-long-name", "teacher"):
        for k in range(n_datasets):
            out.append(result(model, f"{LONG}_{k}", {"acc1": 0.1 + 0.1 * k, "image_retrieval_recall@1": 0.3}))
    return out


def _drawn_figure(monkeypatch, results, tmp_path):
    """bar_chart's figure as written (caught at savefig), drawn by the Agg renderer."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    bar_chart(results, tmp_path / "chart.png")
    fig = saved[0]
    fig.canvas.draw()
    return fig, fig.canvas.get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("n_datasets", [1, 6])
def test_bar_chart_long_names_are_legible(n_datasets, monkeypatch, tmp_path):
    """Tick labels of long benchmark names: each shown in full, none overlapping another, all inside the figure."""
    results = _long_results(n_datasets)
    fig, renderer = _drawn_figure(monkeypatch, results, tmp_path)
    page = fig.bbox
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            labels = [t.label1 for t in axis.get_major_ticks()  # the ticks drawn: those inside the view limits
                      if low <= t.get_loc() <= high and t.label1.get_visible() and t.label1.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i, box in enumerate(boxes):
                assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, \
                    labels[i].get_text()
                for j in range(i):
                    assert not _overlap(box, boxes[j]), (labels[i].get_text(), labels[j].get_text())
    # every (dataset, metric) group is labelled with its full name, wrapped or not
    texts = {"".join(t.get_text().split()) for ax in fig.axes
             for t in ax.get_xticklabels() + ax.get_yticklabels()}
    for k in range(n_datasets):
        for metric in ("acc1", "image_retrieval_recall@1"):
            assert f"{LONG}_{k}{metric}" in texts
    legend_boxes = [leg.get_window_extent(renderer) for leg in fig.legends + [ax.get_legend() for ax in fig.axes]
                    if leg is not None]
    assert legend_boxes
    for box in legend_boxes:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
        for ax in fig.axes:
            assert not _overlap(box, ax.get_window_extent(renderer))  # the legend hides no bar


def test_bar_chart_grows_with_the_number_of_bars(monkeypatch, tmp_path):
    small, _ = _drawn_figure(monkeypatch, _long_results(1), tmp_path)
    large, _ = _drawn_figure(monkeypatch, _long_results(6), tmp_path)
    assert large.get_size_inches()[1] > 3 * small.get_size_inches()[1] / 2
