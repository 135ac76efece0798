"""The recipe search's pure parts: the exact knapsack against brute force, the front, the
mixed recipe it queues, and reading scores back from finished scoring jobs."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from core.recipe import recipe_from_steps
from core.registry import ConfigError
from runs import catalogue as cat
from runs import search as S


def random_table(rng: random.Random, n_layers: int, n_cands: int, unit: int = 16) -> S.ScoreTable:
    layers = [f"model.layers.{i}.mlp.up_proj" for i in range(n_layers)]
    cands = [f"c{j}" for j in range(n_cands)]
    t = S.ScoreTable(layers, cands)
    for layer in layers:
        for c in cands:
            t.set(layer, c, rng.random(), unit * rng.randint(1, 40), 1000)
    return t


def brute(table: S.ScoreTable, budget: int) -> float | None:
    best = None
    for combo in itertools.product(*(table.options(layer) for layer in table.layers)):
        nb = sum(table.nbytes[layer][c] for layer, c in zip(table.layers, combo, strict=True))
        sc = sum(table.score[layer][c] for layer, c in zip(table.layers, combo, strict=True))
        if nb <= budget and (best is None or sc < best):
            best = sc
    return best


@pytest.mark.parametrize("seed", range(25))
def test_solve_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    t = random_table(rng, rng.randint(1, 5), rng.randint(1, 4), unit=rng.choice([1, 8, 24]))
    lo = sum(min(t.nbytes[la].values()) for la in t.layers)
    hi = sum(max(t.nbytes[la].values()) for la in t.layers)
    for budget in (lo - 1, lo, (lo + hi) // 2, hi, hi + 100):
        want = brute(t, budget)
        got = S.solve(t, budget)
        if want is None:
            assert got is None
            continue
        assert got is not None
        assert got.nbytes <= budget
        assert math.isclose(got.score, want, abs_tol=1e-12)
        assert set(got.choice) == set(t.layers)


def test_coarse_units_stay_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DP_STATES the bytes are rounded up: never over budget, maybe not optimal."""
    monkeypatch.setattr(S, "MAX_DP_STATES", 7)
    rng = random.Random(3)
    t = random_table(rng, 4, 3, unit=1)
    for budget in range(60, 200, 13):
        got = S.solve(t, budget)
        want = brute(t, budget)
        if got is not None:
            assert got.nbytes <= budget and want is not None and got.score >= want - 1e-12


def test_front_is_monotone_and_uses_catalogue_keys() -> None:
    t = random_table(random.Random(1), 4, 3)
    budgets = range(200, 2000, 100)
    rows = S.predicted_front(t, list(budgets))
    scores = [r[cat.PREDICTED_KL.key] for r in rows]
    assert scores == sorted(scores, reverse=True)  # more bytes never predicts worse
    assert all(r[cat.PREDICTED_BYTES.key] <= r["budget_bytes"] for r in rows)


def test_budget_in_mb_or_bits() -> None:
    t = random_table(random.Random(0), 3, 2)  # 3000 weights
    assert S.budget_bytes(t, bpw=4.0) == 1500
    assert S.budget_bytes(t, mb=0.5) == 500_000
    for bad in ({}, {"mb": 1.0, "bpw": 4.0}, {"bpw": 0.0}, {"mb": float("nan")}):
        with pytest.raises(ConfigError):
            S.budget_bytes(t, **bad)


def test_mixed_recipe_targets_each_layer_once() -> None:
    cands = S.parse_candidates(["rtn-int8", "gptq-4bit-g128", "2:4+int4"])
    choice = {"a.q_proj": "gptq-4bit-g128", "a.k_proj": "rtn-int8", "a.v_proj": "2:4+int4"}
    steps = S.mixed_recipe(choice, cands)
    recipe = recipe_from_steps(steps)
    by_layer: dict[str, list[str]] = {}
    for step in recipe.steps:
        for layer in choice:
            if step.selects(layer):
                by_layer.setdefault(layer, []).append(step.method)
    assert by_layer == {"a.q_proj": ["gptq"], "a.k_proj": ["rtn"], "a.v_proj": ["wanda", "rtn"]}


def test_bad_candidates_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown candidate"):
        S.parse_candidates(["gptq-9bit"])
    with pytest.raises(ConfigError):
        S.candidate_from_json("mine", [{"method": "rtn", "bits": 99}])
    assert S.candidate_from_json("mine", {"method": "rtn", "bits": 6}).steps[0]["bits"] == 6


def test_scores_read_back_from_scoring_jobs() -> None:
    cands = S.parse_candidates(["rtn-int8", "gptq-4bit-g128"])
    layers = ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    records = []
    for i, layer in enumerate(layers):
        for j, c in enumerate(cands):
            records.append(
                {
                    "recipe": S.scoring_recipe(c, layer),
                    "metrics": {cat.KL_TO_BASELINE.key: 0.01 * (i + 1) * (j + 1)},
                    "layers": [{"name": layer, "weight_bytes": 100 * (2 - j), "n_weights": 64}],
                }
            )
    records.append({"recipe": [{"method": "rtn", "targets": ["*"]}], "metrics": {}})
    t = S.scores_from_records(records, cands, layers)
    assert t.missing() == []
    assert t.score[layers[1]]["gptq-4bit-g128"] == pytest.approx(0.04)
    assert t.nbytes[layers[0]]["rtn-int8"] == 200
    sol = S.solve(t, 300)
    assert sol is not None and sol.nbytes == 300
    assert sorted(sol.choice.values()) == ["gptq-4bit-g128", "rtn-int8"]


def timed_table(rng: random.Random, n_layers: int, n_cands: int) -> S.ScoreTable:
    t = random_table(rng, n_layers, n_cands)
    t.set_seconds(
        {la: {c: rng.uniform(1e-5, 4e-4) for c in t.candidates} for la in t.layers},
        {"m": 1},
    )
    return t


def brute_time(table: S.ScoreTable, budget: float, cost=None) -> float | None:
    cost = cost or (lambda la, c: table.seconds[la][c])
    best = None
    for combo in itertools.product(*(table.options(la) for la in table.layers)):
        pairs = list(zip(table.layers, combo, strict=True))
        if sum(cost(la, c) for la, c in pairs) <= budget:
            sc = sum(table.score[la][c] for la, c in pairs)
            best = sc if best is None or sc < best else best
    return best


def _time_budgets(t: S.ScoreTable) -> list[float]:
    lo = sum(min(t.seconds[la].values()) for la in t.layers)
    hi = sum(max(t.seconds[la].values()) for la in t.layers)
    return [lo * 0.999, lo * 1.0001, lo + (hi - lo) / 3, (lo + hi) / 2, hi * 1.0001]


@pytest.mark.parametrize("seed", range(20))
def test_time_budget_is_exact_against_brute_force(seed: int) -> None:
    pytest.importorskip("scipy.optimize")
    rng = random.Random(100 + seed)
    t = timed_table(rng, rng.randint(1, 5), rng.randint(2, 4))
    for budget in _time_budgets(t):
        want = brute_time(t, budget)
        got = S.solve(t, budget, S.SECONDS)
        if want is None:
            assert got is None
            continue
        assert got is not None and got.kind == S.SECONDS
        assert got.seconds is not None and got.seconds <= budget
        assert math.isclose(got.score, want, rel_tol=1e-9, abs_tol=1e-12)
        assert got.nbytes == sum(t.nbytes[la][c] for la, c in got.choice.items())


@pytest.mark.parametrize("seed", range(10))
def test_time_budget_dp_without_scipy_is_exact_over_rounded_bins(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the MILP: times rounded up to budget / TIME_BINS bins; never over budget,
    and the optimum over the rounded times."""
    monkeypatch.setattr(S, "_solve_milp", lambda table, budget: S._UNSOLVED)
    monkeypatch.setattr(S, "TIME_BINS", 50)  # coarse bins: rounding matters
    rng = random.Random(200 + seed)
    t = timed_table(rng, rng.randint(1, 5), rng.randint(2, 4))
    for budget in _time_budgets(t):
        unit = budget / 50
        binned = brute_time(t, 50, lambda la, c, u=unit: math.ceil(t.seconds[la][c] / u - 1e-9))
        got = S.solve(t, budget, S.SECONDS)
        if binned is None:
            assert got is None
            continue
        assert got is not None and got.seconds is not None and got.seconds <= budget
        assert math.isclose(got.score, binned, rel_tol=1e-9, abs_tol=1e-12)
        exact = brute_time(t, budget)
        assert exact is not None and got.score >= exact - 1e-12  # rounding can only cost


def test_time_budget_front_and_prediction_carry_the_milliseconds() -> None:
    rng = random.Random(7)
    t = timed_table(rng, 4, 3)
    grid = S.budget_grid(t, 6, S.SECONDS)
    rows = S.predicted_front(t, grid, S.SECONDS)
    assert len(rows) == len(grid)  # the least costly choice fits the lowest budget
    ms = cat.PREDICTED_LINEAR_MS.key
    assert all(r[ms] <= r["budget_ms"] * (1 + 1e-12) for r in rows)
    kls = [r[cat.PREDICTED_KL.key] for r in rows]
    assert kls == sorted(kls, reverse=True)  # more time allowed never predicts worse
    sol = S.solve(t, grid[2], S.SECONDS)
    assert sol is not None and S.prediction(sol)[ms] == pytest.approx(1e3 * sol.seconds)


def test_time_budget_needs_times() -> None:
    t = random_table(random.Random(1), 2, 2)
    with pytest.raises(ConfigError, match="measured times"):
        S.solve(t, 1.0, S.SECONDS)
