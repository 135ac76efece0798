"""Untrusted input cannot hang the app, fill the disk or surface as an internal error
(issue 14): target patterns, uploads, evaluation settings and the baseline cache, recipe
files, empty recipes, missing uploads, sweeps. Each refusal is one line that says what is
allowed, given before any expensive work."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest

from core.data import DataError, TextSet, get_text_set, text_from_upload
from core.metrics import EvalSettings
from core.recipe import MAX_PATTERN_CHARS, NAMED_RECIPES, parse_recipe, recipe_from_steps
from core.registry import ConfigError
from runs import pipeline
from runs.preflight import MAX_CACHE_ENV
from runs.sensitivity import MAX_SENSITIVITY_JOBS, Unit, sensitivity_recipes
from runs.spec import JobSpec, build_spec, steps_from_json
from runs.sweep import parse_sweep_arg
from tests.tiny import tiny_spec, workers_cli

RTN8 = {"method": "rtn", "bits": 8}


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COMPRESSLAB_DATA": str(tmp_path)}
    return workers_cli(*args, env=env)


def _one_error_line(p: subprocess.CompletedProcess, message: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr


# --- target patterns ---------------------------------------------------------------


def test_catastrophic_regex_target_is_matched_in_linear_time() -> None:
    """`re:(.+)+Z` backtracks exponentially in Python's re; RE2 matches it in linear time."""
    names = [f"model.layers.{i}.self_attn.q_proj" + "x" * 2000 for i in range(500)]
    t0 = time.perf_counter()
    recipe = parse_recipe('[{"method": "rtn", "bits": 8, "targets": ["re:(.+)+Z"]}]')
    step = recipe.steps[0]
    assert not any(step.selects(n) for n in names)
    assert step.selects("model.layers.0.mlp.Z_proj")
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            "re:[",
            r"target pattern 're:\[' is not a valid regex \(missing \]: \[\); patterns use RE2",
        ),
        ("re:(a)\\1", "no look-around or back-references"),
        ("re:(?=q)", "no look-around or back-references"),
        ("re:" + "a" * 300, f"must be 1..{MAX_PATTERN_CHARS} characters"),
        ("", f"must be 1..{MAX_PATTERN_CHARS} characters"),
    ],
)
def test_bad_target_pattern_is_a_config_error_when_parsed(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        recipe_from_steps([{**RTN8, "targets": [pattern]}])
    assert "\n" not in str(e.value)


def test_bad_target_fails_in_run_job_before_the_model_loads(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(pipeline, "load_model", _must_not_load)
    spec = JobSpec(model="tiny-random", recipe=[{**RTN8, "targets": ["re:["]}])
    with pytest.raises(ConfigError, match="not a valid regex"):
        pipeline.run_job(spec, cache_dir=tmp_path, resolve_text=get_text_set)


def test_users_patterns_still_select_what_they_say() -> None:
    step = recipe_from_steps([{**RTN8, "targets": [r"re:self_attn\.(q|k|v)_proj"]}]).steps[0]
    assert step.selects("model.layers.3.self_attn.k_proj")
    assert not step.selects("model.layers.3.self_attn.o_proj")
    named = parse_recipe("attn8-mlp4-g128")
    assert named.steps[0].selects("model.layers.0.self_attn.q_proj")
    assert named.steps[1].selects("model.layers.0.mlp.up_proj")


# --- uploads -----------------------------------------------------------------------


def _parquet_bomb(rows: int = 20_000, width: int = 10_240) -> bytes:
    """A few KB of parquet whose text column decodes to rows x width bytes (195 MiB)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = "".join(chr(97 + (i * 7919) % 26) for i in range(width))
    column = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(rows, dtype=np.int32)), pa.array([value])
    )
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": column}), buf, compression="zstd")
    return buf.getvalue()


def test_parquet_that_decodes_to_195_mib_is_refused_before_decoding() -> None:
    payload = _parquet_bomb()
    assert len(payload) < 40_000
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb.parquet: decodes to more than 50.0 MiB of text"):
        text_from_upload("bomb.parquet", payload)
    assert time.perf_counter() - t0 < 1.0  # decoding 195 MiB takes far longer


def test_decoded_text_cap_applies_to_every_type() -> None:
    small = 1000
    with pytest.raises(DataError, match="decodes to more than 1000 bytes"):
        text_from_upload("a.parquet", _parquet_bomb(rows=10, width=200), max_text=small)
    assert text_from_upload("a.parquet", _parquet_bomb(rows=4, width=200), max_text=small)
    with pytest.raises(DataError, match="decodes to more than"):
        text_from_upload("a.txt", b"x" * 2000, max_text=small)
    rows = b"\n".join(b'{"text": "%s"}' % (b"y" * 100) for _ in range(20))
    with pytest.raises(DataError, match="decodes to more than"):
        text_from_upload("a.jsonl", rows, max_text=small)
    with pytest.raises(DataError, match="decodes to more than"):
        text_from_upload("a.csv", b"text\n" + b"z" * 2000 + b"\n", max_text=small)


# --- evaluation settings and the baseline cache ------------------------------------


def test_a_million_eval_tokens_is_refused_by_the_builder() -> None:
    with pytest.raises(ValueError, match=r"eval_tokens=1000000 is out of range: 16..524288"):
        build_spec(
            "demo", [RTN8], text_exists=lambda n: False, eval_settings={"eval_tokens": 10**6}
        )
    with pytest.raises(ValueError, match=r"repeats=100000 is out of range: 1..100"):
        EvalSettings(repeats=100_000)
    with pytest.raises(ValueError, match="ctx must be a whole number"):
        EvalSettings(ctx="256")  # type: ignore[arg-type]


def test_cli_refuses_a_million_eval_tokens_before_queueing(tmp_path) -> None:
    p = _cli(
        "run", "--model", "tiny-random", "--recipe", "rtn-int8", "--eval-tokens", "1000000",
        tmp_path=tmp_path,
    )  # fmt: skip
    _one_error_line(p, "eval_tokens=1000000 is out of range: 16..524288")


def _must_not_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded before the input was checked")


def _small_spec(**kw: object) -> JobSpec:
    return tiny_spec(**kw)


def test_baseline_cache_over_the_cap_is_refused_with_the_numbers(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(MAX_CACHE_ENV, "1000")

    def no_baseline(*args: object, **kwargs: object) -> None:
        raise AssertionError("the baseline ran before its cache size was checked")

    monkeypatch.setattr(pipeline.baseline_cache, "ensure_baseline", no_baseline)
    with pytest.raises(ConfigError) as e:
        pipeline.run_job(_small_spec(), cache_dir=tmp_path / "cache", resolve_text=get_text_set)
    msg = str(e.value)
    assert "the baseline cache would need" in msg and "windows x 31 positions (ctx 32 - 1) x" in msg
    assert f"the cap is 1000 bytes ({MAX_CACHE_ENV})" in msg and "is free" in msg
    assert not any((tmp_path / "cache").glob("*.tmp"))


def test_bad_cache_cap_setting_is_named(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(MAX_CACHE_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_CACHE_ENV}='lots' must be a positive whole"):
        pipeline.run_job(_small_spec(), cache_dir=tmp_path, resolve_text=get_text_set)


# --- recipes -----------------------------------------------------------------------


def test_malformed_yaml_recipe_file_is_one_line(tmp_path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("- method: rtn\n  bits: [8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mine.yaml' is not valid YAML \(line \d+, column \d+\)"):
        parse_recipe(str(bad))
    tabs = tmp_path / "tabs.yml"
    tabs.write_text("- method: rtn\n\tbits: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_recipe(str(tabs))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe[")
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_recipe(str(binary))


def test_cli_malformed_yaml_recipe_exits_2_with_one_line(tmp_path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("- method: rtn\n  bits: [8\n", encoding="utf-8")
    p = _cli("run", "--model", "tiny-random", "--recipe", str(bad), tmp_path=tmp_path)
    _one_error_line(p, "is not valid YAML")


@pytest.mark.parametrize("typed", ["[]", '{"steps": []}', "  [ ]  "])
def test_empty_recipe_is_refused_the_baseline_is_named(typed: str) -> None:
    with pytest.raises(ConfigError, match="use the named recipe 'baseline'"):
        parse_recipe(typed)
    with pytest.raises(ConfigError, match="use the named recipe 'baseline'"):
        steps_from_json(typed)
    assert parse_recipe("baseline").steps == () and parse_recipe("baseline").name == "baseline"


def test_empty_recipe_file_is_refused(tmp_path) -> None:
    empty = tmp_path / "nothing.yaml"
    empty.write_text("[]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="named recipe 'baseline'"):
        parse_recipe(str(empty))


def test_cli_empty_recipe_exits_2(tmp_path) -> None:
    p = _cli("run", "--model", "tiny-random", "--recipe", "[]", tmp_path=tmp_path)
    _one_error_line(p, "a recipe needs at least one step")


# --- uploads that are not stored ---------------------------------------------------


def test_missing_upload_is_refused_by_the_builder() -> None:
    with pytest.raises(DataError, match="'upload:nope' is not in the database: upload it again"):
        build_spec("demo", [RTN8], calib="upload:nope", text_exists=lambda n: False)


def test_missing_upload_fails_in_run_job_before_the_model_loads(monkeypatch, tmp_path) -> None:
    """A job queued with an upload that is gone (deleted, another database) fails at once."""

    def resolve(name: str) -> TextSet:
        if name.startswith("upload:"):
            raise DataError(f"uploaded text {name!r} is not in the database")
        return get_text_set(name)

    monkeypatch.setattr(pipeline, "load_model", _must_not_load)
    with pytest.raises(DataError, match="'upload:nope' is not in the database"):
        pipeline.run_job(_small_spec(calib="upload:nope"), cache_dir=tmp_path, resolve_text=resolve)


# --- sweeps ------------------------------------------------------------------------


def test_sweep_with_zero_step_says_the_step_must_be_non_zero() -> None:
    with pytest.raises(ConfigError, match="the sweep step must be non-zero"):
        parse_sweep_arg("sparsity=0.1:0.5:0")
    with pytest.raises(ConfigError, match="must be finite numbers"):
        parse_sweep_arg("sparsity=0.1:inf:0.1")
    with pytest.raises(ConfigError, match="values must be numbers"):
        parse_sweep_arg("sparsity=a:b:c")
    assert parse_sweep_arg("sparsity=0.1:0.3:0.1") == ("sparsity", [0.1, 0.2, 0.3])


def test_cli_sweep_with_zero_step_exits_2(tmp_path) -> None:
    p = _cli(
        "run", "--model", "tiny-random", "--recipe", "magnitude-50",
        "--sweep", "sparsity=0.1:0.5:0", tmp_path=tmp_path,
    )  # fmt: skip
    _one_error_line(p, "the sweep step must be non-zero")


def test_sweeps_are_capped_per_submission() -> None:
    with pytest.raises(ConfigError, match="a sweep has at most 50 points"):
        parse_sweep_arg("sparsity=0:1:0.001")
    many = [
        Unit(f"model.layers.{i}.mlp.up_proj", f"model.layers.{i}.mlp.up_proj") for i in range(65)
    ]
    with pytest.raises(
        ConfigError, match=f"queues at most {MAX_SENSITIVITY_JOBS} jobs, this one 65"
    ):
        sensitivity_recipes(RTN8, many)
    assert len(sensitivity_recipes(RTN8, many[:MAX_SENSITIVITY_JOBS])) == MAX_SENSITIVITY_JOBS


def test_named_recipes_all_still_parse() -> None:
    for name in NAMED_RECIPES:
        assert parse_recipe(name).name == name


def test_cli_bad_target_pattern_exits_2_before_queueing(tmp_path) -> None:
    recipe = '[{"method": "rtn", "targets": ["re:["]}]'
    p = _cli("run", "--model", "tiny-random", "--recipe", recipe, tmp_path=tmp_path)
    _one_error_line(p, "target pattern 're:[' is not a valid regex")
