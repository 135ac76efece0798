"""Task accuracy (core/tasks, runs/tasks.py): the local stdlib_body task on the demo model
through lm-eval, a job's stored scores with stderr, task columns on Compare, and the
offline refusal of hub tasks before anything is loaded."""

from __future__ import annotations

import json
import socket
import sys
from types import SimpleNamespace

import pytest

from core import hub
from core.calib import CalibSettings
from core.data import HELDOUT_MODULES, DataError, get_text_set
from core.metrics import EvalSettings
from core.models import load_model
from core.registry import ConfigError
from core.tasks import LOCAL_TASKS, TaskScore, check_tasks, evaluate_tasks, scores_from_results
from core.tasks.stdlib_body import build, docs
from runs import catalogue as cat
from runs import pipeline
from runs.pipeline import run_job
from runs.spec import JobSpec, build_spec
from runs.tasks import cache_path, rows_problem, score_columns
from tests.tiny import tiny_spec

LIMIT = 10  # examples per task in these tests: a few seconds of lm-eval on an idle CPU


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_the_shipped_examples_are_well_formed() -> None:
    rows = docs.rows()
    assert len(rows) == build.N_EXAMPLES
    for r in rows:
        assert len(r["choices"]) == build.N_CHOICES == len(set(r["choices"]))
        assert 0 <= r["label"] < build.N_CHOICES
        assert r["context"].startswith(("def ", "async def ")) and r["context"].endswith("\n")
        module = r["source"].split("/")[0].split(".")[0]
        assert module in HELDOUT_MODULES  # held out of the demo model's training


def test_the_shipped_examples_are_what_the_builder_makes_here() -> None:
    header = json.loads(docs.DATA_FILE.read_text().splitlines()[0])
    v = sys.version_info
    if header["built_from"] != f"python stdlib {v.major}.{v.minor}.{v.micro}":
        pytest.skip(f"data built from {header['built_from']}; this is Python {sys.version}")
    assert build.examples(list(build.functions())) == docs.rows()


def test_task_names_and_limits_are_checked() -> None:
    assert check_tasks([" stdlib_body", "stdlib_body", ""], 5) == ("stdlib_body",)
    with pytest.raises(ConfigError, match="unknown task 'mmlu'; available: stdlib_body"):
        check_tasks(["mmlu"], None)
    for bad in (0, -3, 10**9, 2.5, True):
        with pytest.raises(ConfigError, match="task limit must be a whole number"):
            check_tasks(["stdlib_body"], bad)
    with pytest.raises(ConfigError, match="unknown task"):
        build_spec("demo", [], text_exists=lambda n: True, tasks=["nope"])


def test_the_local_task_gives_the_same_baseline_accuracy_twice(demo) -> None:
    first = evaluate_tasks(demo.model, demo.tokenizer, ["stdlib_body"], LIMIT)
    second = evaluate_tasks(demo.model, demo.tokenizer, ["stdlib_body"], LIMIT)
    assert first == second
    by_metric = {s.metric: s for s in first}
    assert set(by_metric) == {"acc", "acc_norm"}
    acc = by_metric["acc"]
    assert acc.task == "stdlib_body" and acc.n == LIMIT and acc.higher_is_better
    assert 0.0 <= acc.value <= 1.0 and (acc.value * LIMIT) == pytest.approx(
        round(acc.value * LIMIT)
    )
    # lm-eval's stderr of a mean: sample standard deviation / sqrt(n)
    p = acc.value
    expected = (p * (1 - p) * LIMIT / (LIMIT - 1)) ** 0.5 / LIMIT**0.5
    assert acc.stderr == pytest.approx(expected)


def test_lm_eval_output_is_read_per_task_and_metric() -> None:
    out = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.75, "acc_stderr,none": 0.01},
            "lambada_openai": {"perplexity,none": 4.2, "perplexity_stderr,none": "N/A"},
        },
        "n-samples": {"piqa": {"effective": 20}, "lambada_openai": {"effective": 30}},
        "higher_is_better": {"piqa": {"acc": True}, "lambada_openai": {"perplexity": False}},
    }
    assert scores_from_results(out) == [
        TaskScore("lambada_openai", "perplexity", 4.2, None, 30, False),
        TaskScore("piqa", "acc", 0.75, 0.01, 20, True),
    ]


def _demo_spec(recipe: str, **fields) -> JobSpec:
    from core.recipe import parse_recipe

    r = parse_recipe(recipe)
    return JobSpec(
        model="demo",
        recipe=r.to_list(),
        recipe_name=r.name,
        eval=EvalSettings(ctx=64, eval_tokens=128, prompt_len=8, decode_tokens=2, repeats=1),
        calib_settings=CalibSettings(n_samples=2, seq_len=32),
        **fields,
    )


def test_a_job_stores_run_and_baseline_scores_with_stderr(tmp_path, monkeypatch) -> None:
    spec = _demo_spec("rtn-int8", tasks=["stdlib_body"], task_limit=LIMIT)
    res = run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)
    stored = json.loads(json.dumps(res.metrics))  # as the database holds it
    for key in (cat.TASK_SCORES.key, cat.BASELINE_TASK_SCORES.key):
        scores = [TaskScore.from_dict(r) for r in stored[key]]
        assert {s.metric for s in scores} == {"acc", "acc_norm"}
        assert all(s.n == LIMIT and s.stderr is not None and s.stderr > 0 for s in scores)
        assert rows_problem(stored[key]) is None
    assert set(score_columns(stored)) == {"task:stdlib_body:acc", "task:stdlib_body:acc_norm"}

    # The baseline's scores are cached: a second job does not score the baseline again.
    loaded = load_model("demo")
    assert cache_path(tmp_path, loaded, ["stdlib_body"], LIMIT).is_file()
    calls: list[str] = []
    real = pipeline.tasks.score

    def counting(job, report, what):
        calls.append(what)
        return real(job, report, what)

    monkeypatch.setattr(pipeline.tasks, "score", counting)
    again = run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)
    assert calls == ["tasks"]
    assert again.metrics[cat.BASELINE_TASK_SCORES.key] == stored[cat.BASELINE_TASK_SCORES.key]
    assert again.metrics[cat.TASK_SCORES.key] == stored[cat.TASK_SCORES.key]  # deterministic


def _no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded before the hub task was refused")


@pytest.mark.parametrize("how", ["flag", "endpoint"])
def test_a_hub_task_offline_is_refused_before_anything_is_loaded(tmp_path, monkeypatch, how):
    probes: list[float] = []
    real_connect = socket.create_connection

    def connect(address, timeout=None, *args):
        probes.append(timeout)
        return real_connect(address, timeout, *args)

    if how == "flag":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # nothing listens on port 9 here: the connection is refused at once
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(pipeline, "load_model", _no_loading)
    spec = tiny_spec("baseline", tasks=["stdlib_body", "arc_easy"], task_limit=5)
    with pytest.raises(DataError, match=r"hub unreachable \(offline\?\).*arc_easy.*stdlib_body"):
        run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)
    # The only wait is one TCP probe bounded by hub.PROBE_TIMEOUT_S (none with the flag).
    assert probes == ([] if how == "flag" else [hub.PROBE_TIMEOUT_S])


def _job(i: int, acc: float, weight: float) -> SimpleNamespace:
    result = {
        cat.PERPLEXITY.key: 10.0 + i,
        cat.WEIGHT_BYTES.key: weight,
        cat.TASK_SCORES.key: [
            TaskScore("stdlib_body", "acc", acc, 0.03, 200).to_dict(),
            TaskScore("stdlib_body", "acc_norm", acc + 0.05, 0.03, 200).to_dict(),
        ],
    }
    return SimpleNamespace(
        id=i,
        model="demo",
        recipe_label=f"r{i}",
        result=result,
        spec={"recipe": [{"method": "rtn"}] if i else []},
        fingerprint={},
        finished_at=None,
    )


def test_a_compare_figure_with_a_task_axis() -> None:
    from ui.figures import tradeoff_figure
    from ui.frames import runs_frame
    from ui.tasks_view import with_task_columns

    jobs = [_job(0, 0.30, 10e6), _job(1, 0.28, 3e6), _job(2, 0.20, 5e6)]
    df, cols = with_task_columns(runs_frame(jobs), jobs)
    y = cat.task_column("stdlib_body", "acc")
    assert cols == [y, cat.task_column("stdlib_body", "acc_norm")]
    assert cat.axes(df.columns)[y] == ("stdlib_body: acc (lm-eval)", "higher")
    fig = tradeoff_figure(df, cat.WEIGHT_BYTES.col, y)
    points = {
        (x, yy) for t in fig.data if t.mode == "markers" for x, yy in zip(t.x, t.y, strict=True)
    }
    assert points == {(10.0, 0.30), (3.0, 0.28), (5.0, 0.20)}
    assert fig.layout.yaxis.title.text == "stdlib_body: acc (lm-eval)"
    # Higher accuracy is better: run 2 (bigger and less accurate than run 1) is dominated.
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert sorted(front.x) == [3.0, 10.0]


def test_a_bundle_refuses_malformed_task_scores() -> None:
    good = [TaskScore("stdlib_body", "acc", 0.3, 0.03, 200).to_dict()]
    assert rows_problem(good) is None
    assert rows_problem([{"task": "x"}]) == ("[0]", "an object {task, metric, value, stderr, n}")
    assert rows_problem([{**good[0], "stderr": -1}]) == ("[0].stderr", "a number >= 0 or null")
    assert rows_problem("acc") is not None
    assert LOCAL_TASKS["stdlib_body"][0].is_dir()
