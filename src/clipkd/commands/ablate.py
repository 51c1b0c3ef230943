"""`clipkd ablate -c study.yaml`: train every arm × seed of a study (finished runs are kept), evaluate the teacher
once, and write ``ablation.md``, ``ablation.json``, ``ablation.png`` and ``curves.png``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from clipkd.errors import ConfigError

TEACHER_FILE = "teacher.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `clipkd ablate` (nothing heavy imported)."""
    p.add_argument("--config", "-c", required=True, help="study YAML (see configs/ablation-demo.yaml)")
    p.add_argument("--dry-run", action="store_true", help="check the study and list its runs; train nothing")
    p.add_argument("--report-only", action="store_true", help="write the report from the runs finished so far "
                   "(e.g. while the study runs elsewhere); train nothing")
    p.add_argument("--jobs", "-j", type=_positive, default=1,
                   help="runs trained at once, each in its own process with its share of the CPU cores (and one GPU "
                   "each, in turn, when there are GPUs); logs in <out>/logs (default: 1, in this process)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _chance(metric: str, classes: int) -> Optional[float]:
    """A random guess's expected score: 1/C for acc1, min(1, 5/C) for acc5; None for other metrics."""
    return {"acc1": 1 / classes, "acc5": min(1.0, 5 / classes)}.get(metric) if classes else None


def _teacher_scores(study, cfg) -> dict[str, Any]:
    """The teacher's val and test metric, each benchmark's size (usable images) and chance level (computed once,
    kept in ``<out>/teacher.json`` under the teacher's and the benchmarks' content identities: a changed teacher,
    benchmark or metric is evaluated again)."""
    from clipkd.config import teacher_list
    from clipkd.eval.identity import benchmark_identity
    from clipkd.eval.runner import Benchmark
    from clipkd.files import read_json, write_json
    from clipkd.identity import config_identity
    from clipkd.models.factory import create_encoder

    teachers = teacher_list(cfg.teacher)
    if len(teachers) != 1:
        raise ConfigError("the study's base config needs exactly one teacher to measure the gap against")
    t, sel = teachers[0], study.select
    specs = {b.name: b for b in cfg.eval.benchmarks}
    sides = {"val": sel.val, "test": sel.test}
    benches = {side: Benchmark(specs[name]) for side, name in sides.items()}  # read once: identified, evaluated
    key = {"metric": sel.metric, "teacher": config_identity(t),
           **{side: benchmark_identity(bench) for side, bench in benches.items()}}
    path = Path(study.out) / TEACHER_FILE
    if path.is_file() and read_json(path).get("key") == key:
        saved = read_json(path)
        return {**saved["scores"], "n": saved["n"], "chance": saved["chance"]}
    encoder = create_encoder(t.model, t.pretrained, t.image_mean, t.image_std, role="teacher").eval()
    scores, n, chance = {}, {}, {}
    for side, name in sides.items():
        bench = benches[side]
        metrics = bench.evaluate(encoder)
        if sel.metric not in metrics:  # e.g. acc5 of a task of 5 classes or fewer (it is not reported)
            raise ConfigError(f"select.metric: benchmark {name!r} does not report {sel.metric!r} (it reports "
                              f"{', '.join(metrics)})")
        scores[side] = metrics[sel.metric]
        n[side] = bench.images
        chance[side] = _chance(sel.metric, len(bench.prompts()[0])) if specs[name].task == "zeroshot" else None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "model": t.model, "pretrained": t.pretrained, "scores": scores, "n": n,
                      "chance": chance})
    return {**scores, "n": n, "chance": chance}


def _configs(study, base: dict) -> list[tuple[Any, Any]]:
    """``(run, config)`` of every run, all validated before anything trains (one error for all problems)."""
    from clipkd.ablate.runs import plan, run_config

    planned, problems = [], []
    for spec in plan(study):
        try:
            planned.append((spec, run_config(study, base, spec)))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return planned


def checked_runs(study) -> list[tuple[Any, Any]]:
    """``(run, config)`` of every run, checked before any compute: the selection against the base's benchmarks,
    every run's config, and the models, data, benchmarks and teacher cache of every distinct setup."""
    from clipkd.ablate.study import base_raw, check_selection

    base = base_raw(study)
    problem = check_selection(study, base)
    if problem:
        raise ConfigError(problem)
    planned = _configs(study, base)
    _preflight(planned)
    _check_distinct(study, planned[0][1])
    return planned


def _check_distinct(study, cfg) -> None:
    """Refuse a val benchmark that shares images with the test benchmark (by content, under any name or order):
    settings chosen on it would be judged on the data they were chosen on."""
    from clipkd.eval.identity import image_digests
    from clipkd.eval.runner import Benchmark

    sel = study.select
    specs = {b.name: b for b in cfg.eval.benchmarks}
    val, test = (set(image_digests(Benchmark(specs[name]))) for name in (sel.val, sel.test))
    shared = len(val & test)
    if shared:
        what = "the same data" if val == test else f"sharing {shared} of their images ({len(val)} and {len(test)})"
        raise ConfigError(f"select.val ({sel.val!r}) and select.test ({sel.test!r}) are {what}: settings chosen on "
                          "val would be judged on images they were chosen on; point select.val at a held-out split "
                          "with no test image")


def _preflight(planned: list[tuple[Any, Any]]) -> None:
    """The filesystem checks of ``clipkd train`` (models, data, benchmarks, teacher cache) once per distinct
    setup of the study's runs, all problems in one error."""
    import json

    from clipkd.build.models import teacher_in_use
    from clipkd.build.preflight import preflight

    seen, problems = set(), []
    for spec, cfg in planned:
        d = cfg.model_dump(mode="json")
        setup = json.dumps([d["teacher"] if teacher_in_use(cfg) else None, d["student"], d["data"], d["eval"],
                            d["distill"]["teacher_cache"], d["distill"]["cache_views"]], sort_keys=True)
        if setup not in seen:
            seen.add(setup)
            try:
                preflight(cfg)
            except ConfigError as exc:
                problems.append(f"run {spec.name}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


def run_study(study, log=print, report_only: bool = False, jobs: int = 1) -> Optional[dict[str, Any]]:
    """Train what is not finished (``report_only``: nothing; ``jobs``: runs at once, each in its own process),
    then summarise the finished runs; the summary (None when a signal stopped the study)."""
    from tqdm import tqdm

    from clipkd.ablate.runs import run_state

    planned = checked_runs(study)
    teacher = _teacher_scores(study, planned[0][1])  # before hours of training: its problems come first
    memo: dict[str, Any] = {}  # the inputs' identity, once per distinct setup
    states = {spec.name: run_state(Path(cfg.run_dir), cfg, memo) for spec, cfg in planned}
    done = {name: state.result for name, state in states.items() if state.result is not None}
    todo = [(s, c) for s, c in planned if s.name not in done]
    log(f"study: {len(planned)} runs, {len(done)} finished already")
    if todo and not report_only:
        for spec, _ in todo:
            if states[spec.name].changes:
                log(f"{spec.name} was trained with another config ({'; '.join(states[spec.name].changes)}): "
                    "moved aside and trained again")
        with tqdm(total=len(planned), initial=len(done), desc="study", unit="run") as bar:
            train_all = _train_in_turn if jobs == 1 else _train_at_once
            stopped = train_all(study, todo, states, done, bar, jobs)
        if stopped:  # pre-empted: checkpoints are written; the study continues from them next time
            log(f"study stopped by {stopped}; run the same command to continue")
            return None
    results: dict[str, list[dict]] = {}
    for spec, _ in planned:
        if spec.name in done:
            results.setdefault(spec.arm.name, []).append(done[spec.name])
    missing = [s.name for s, _ in planned if s.name not in done]
    return _write_report(study, planned, results, teacher, missing)


def _train_in_turn(study, todo, states, done: dict, bar, jobs: int) -> Optional[str]:
    """Train ``todo`` one after another in this process; the signal that stopped one, or None."""
    from clipkd.ablate.runs import collect, train

    for spec, cfg in todo:
        bar.set_postfix_str(spec.name)
        outcome = train(cfg, fresh=True) if states[spec.name].changes else train(cfg)
        if outcome.complete:  # also when a signal came during its final evaluation: the study stops after it
            done[spec.name] = collect(study, spec, cfg)
            bar.update()
        if outcome.stopped_by:
            return f"{outcome.stopped_by} during {spec.name}"
    return None


def _train_at_once(study, todo, states, done: dict, bar, jobs: int) -> Optional[str]:
    """Train ``todo`` with ``jobs`` runs at once, each in a process of its own (:mod:`clipkd.ablate.jobs`)."""
    from clipkd.ablate.jobs import Job, train_parallel
    from clipkd.ablate.runs import collect
    from clipkd.config import dump_config
    from clipkd.files import write_atomic

    out = Path(study.out)
    by_name, batch = {}, []
    for spec, cfg in todo:
        path = out / "jobs" / f"{spec.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, dump_config(cfg).encode())
        by_name[spec.name] = (spec, cfg)
        batch.append(Job(spec.name, path, out / "logs" / f"{spec.name}.log", fresh=bool(states[spec.name].changes)))

    def finished(name: str) -> None:
        done[name] = collect(study, *by_name[name])
        bar.update()

    return train_parallel(batch, jobs, finished, on_change=lambda names: bar.set_postfix_str(", ".join(names)))


def _write_report(study, planned, results: dict[str, list[dict]], teacher: dict[str, float],
                  missing: list[str]) -> dict[str, Any]:
    """``ablation.json``/``.md`` and the plots from the finished runs (``missing``: the runs left out)."""
    from clipkd.ablate.report import markdown, plots, summarise, sweep_summary
    from clipkd.ablate.runs import sweep_points
    from clipkd.files import write_atomic, write_json

    if study.baseline not in results:
        raise ConfigError(f"no finished run of the baseline '{study.baseline}' to measure the others against; "
                          "run the study (without --report-only) first")
    summary = summarise(results, teacher, study.baseline)
    summary["sweeps"] = sweep_summary(sweep_points(study, planned), summary)
    summary["missing"] = missing
    note = (f"**Partial: {len(missing)} of {len(planned)} runs not finished** ({', '.join(missing)}); arms show the "
            "seeds they have.\n\n") if missing else ""
    out = Path(study.out)
    write_json(out / "ablation.json", {"summary": summary, "runs": results})
    write_atomic(out / "ablation.md", ("# Ablation\n\n" + note + markdown(summary, study.select.metric)).encode())
    plots(summary, results, out)
    return summary


def run_ablate(args: argparse.Namespace) -> int:
    """`clipkd ablate`: check the study, then run it (or list it with --dry-run)."""
    from clipkd.ablate.study import load_study

    study = load_study(args.config)
    if args.dry_run:
        from clipkd.ablate.runs import run_state

        memo: dict = {}
        for spec, cfg in checked_runs(study):
            print(f"{spec.name}: {run_state(Path(cfg.run_dir), cfg, memo).describe()}  {spec.arm.overrides}")
        return 0
    if run_study(study, report_only=args.report_only, jobs=args.jobs) is not None:
        print((Path(study.out) / "ablation.md").read_text())
    return 0
