"""Generations (core/generate.py, runs/generations.py, ui/generations_view.py): greedy,
fixed-length, repeatable continuations stored with every run beside the baseline's, the
first differing token found and marked, prompts validated."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from core.data import get_text_set
from core.generate import (
    DEMO_PROMPTS,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    check_prompts,
    continuations,
    default_prompts,
    first_difference,
    greedy_ids,
)
from core.models import load_model
from core.registry import ConfigError
from runs import catalogue as cat
from runs.generations import pairs, prompts_of, rows_problem
from runs.pipeline import run_job
from runs.spec import build_spec
from tests.tiny import tiny_spec
from ui.generations_view import common_prompts, marked_html, pair_html, runs_columns, split_prompts


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_continuations_are_greedy_fixed_length_and_repeatable(demo) -> None:
    first = continuations(demo.model, demo.tokenizer, DEMO_PROMPTS[:2], max_new_tokens=12)
    again = continuations(demo.model, demo.tokenizer, DEMO_PROMPTS[:2], max_new_tokens=12)
    assert first == again
    for c in first:
        assert len(c.ids) == len(c.pieces) == 12
        assert "".join(c.pieces) == c.text == demo.tokenizer.decode(c.ids)
    # Each token is the argmax of the model's next-token distribution without a cache.
    ids = demo.tokenizer(DEMO_PROMPTS[0], add_special_tokens=False)["input_ids"]
    seq = torch.tensor(ids + first[0].ids)
    with torch.no_grad():
        logits = demo.model(input_ids=seq[None]).logits[0]
    expected = logits[len(ids) - 1 : -1].argmax(-1).tolist()
    assert first[0].ids == expected
    assert greedy_ids(demo.model, torch.tensor(ids), 3) == expected[:3]


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_prompts_are_bounded_and_checked_before_queueing() -> None:
    assert check_prompts(["a", "  ", "b"]) == ["a", "b"]
    with pytest.raises(ConfigError, match=f"at most {MAX_PROMPTS} prompts"):
        check_prompts(["p"] * (MAX_PROMPTS + 1))
    with pytest.raises(ConfigError, match=f"at most {MAX_PROMPT_CHARS} are allowed"):
        check_prompts(["x" * (MAX_PROMPT_CHARS + 1)])
    with pytest.raises(ConfigError, match="prompt 1 must be text"):
        build_spec("demo", [], text_exists=lambda n: True, prompts=[3])
    spec, _ = build_spec("demo", [], text_exists=lambda n: True, prompts=["def f(x):\n"])
    assert spec.prompts == ["def f(x):\n"]
    assert split_prompts("def a():\n---\n\n---\nclass B:\n") == ["def a():\n", "class B:\n"]


def test_every_run_stores_baseline_and_run_continuations(tmp_path) -> None:
    prompts = ["def f(x):\n", "import os\n"]
    res = run_job(
        tiny_spec("rtn-int8", prompts=prompts), cache_dir=tmp_path, resolve_text=get_text_set
    )
    rows = json.loads(json.dumps(res.metrics[cat.GENERATIONS.key]))
    assert [r["prompt"] for r in rows] == prompts
    assert rows_problem(rows) is None
    for r in rows:
        assert len(r["baseline"]["ids"]) == len(r["run"]["ids"]) == r["max_new_tokens"]
        assert r["first_diff"] == first_difference(r["baseline"]["ids"], r["run"]["ids"])
    base = run_job(
        tiny_spec("baseline", prompts=prompts), cache_dir=tmp_path, resolve_text=get_text_set
    ).metrics[cat.GENERATIONS.key]
    assert all(r["first_diff"] is None and r["run"] == r["baseline"] for r in base)
    # The baseline's continuations do not depend on the recipe that follows.
    assert [r["baseline"] for r in rows] == [r["baseline"] for r in base]
    assert default_prompts("demo") == DEMO_PROMPTS
    assert prompts_of(SimpleNamespace(spec=tiny_spec("baseline"))) == list(DEMO_PROMPTS)


def _cont(ids: list[int], pieces: list[str]):
    from core.generate import Continuation

    return Continuation("p<", ids, pieces, "".join(pieces))


def test_the_first_differing_token_is_marked_and_text_escaped() -> None:
    row = pairs([_cont([1, 2, 3], ["a", "<b>", "c"])], [_cont([1, 4, 3], ["a", " ", "c"])])[0]
    assert row["first_diff"] == 1
    html = pair_html(row)
    assert html.count('class="cl-first-diff"') == 2  # on both sides
    assert "&lt;b&gt;" in html and "<b>" not in html and "p&lt;" in html
    assert (
        '<mark class="cl-first-diff" title="first token that differs from the baseline">·' in html
    )
    assert marked_html(["x", "y"], None) == "xy"


def test_runs_in_columns_for_one_prompt() -> None:
    def job(i, run_ids, pieces):
        row = pairs([_cont([1, 2], ["a", "b"])], [_cont(run_ids, pieces)])[0]
        return SimpleNamespace(
            id=i, model="demo", recipe_label=f"r{i}", result={cat.GENERATIONS.key: [row]}
        )

    jobs = [job(1, [1, 2], ["a", "b"]), job(2, [1, 9], ["a", "z"])]
    assert common_prompts(jobs) == ["p<"]
    cols = runs_columns(jobs, "p<")
    assert [t for t, _ in cols] == ["Baseline (demo)", "#1 r1", "#2 r2"]
    assert "cl-first-diff" not in cols[1][1] and "cl-first-diff" in cols[2][1]
