"""Property tests over untrusted input (issue 14): recipe text and steps, uploaded files of
every accepted type, bundles, sweep arguments and evaluation settings. Every input ends
in success or in the project's own error (ConfigError, DataError, BundleError), never in
another exception, and within the per-example deadline. Example counts are fixed so the
whole file takes well under a minute."""

from __future__ import annotations

import io
import json
import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import UPLOAD_EXTENSIONS, DataError, text_from_upload
from core.recipe import NAMED_RECIPES, parse_recipe, recipe_from_steps
from core.registry import ConfigError, methods
from runs.spec import build_spec, steps_from_json
from runs.sweep import parse_sweep_arg
from ui import bundle

DEADLINE = timedelta(milliseconds=2000)
FAST = dict(
    deadline=DEADLINE, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def _examples(n: int) -> Any:
    return settings(max_examples=n, **FAST)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

# --- recipes -----------------------------------------------------------------------

METHODS = sorted(m.name for m in methods())
PARAM_NAMES = ["bits", "group_size", "granularity", "symmetric", "sparsity", "pattern", "alpha",
               "act_mode", "threshold", "dtype", "format", "quant_type", "clip_search", "x"]  # fmt: skip
patterns = (
    st.text(max_size=40)
    | st.text(max_size=30).map(lambda s: "re:" + s)
    | st.sampled_from(
        ["re:(.+)+Z", "re:[", "re:(a|aa)*$", "re:(?=x)", "re:\\1", "*", "re:mlp", "[", "**"]
    )
)
steps = st.fixed_dictionaries(
    {"method": st.sampled_from(METHODS) | json_scalars},
    optional={
        "targets": st.lists(patterns, max_size=4) | json_values,
        "ignore": st.lists(patterns, max_size=4) | json_values,
        **{p: json_values for p in PARAM_NAMES},
    },
)
long_names = [f"model.layers.{i}.self_attn.q_proj" + "a" * 300 for i in range(50)]


@_examples(400)
@given(raw=st.lists(steps, max_size=3) | json_values)
def test_recipe_steps_end_in_a_config_error_or_a_recipe(raw: Any) -> None:
    try:
        recipe = recipe_from_steps(raw)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    for step in recipe.steps:  # matching a parsed pattern is linear: no deadline overrun
        [step.selects(n) for n in long_names]


@_examples(300)
@given(
    text=st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.lists(steps, max_size=3).map(lambda s: json.dumps(s, allow_nan=True))
    | st.sampled_from(list(NAMED_RECIPES))
)
def test_recipe_text_ends_in_a_config_error_or_a_recipe(text: str) -> None:
    for parse in (parse_recipe, steps_from_json):
        try:
            parse(text)
        except ConfigError as e:
            assert "\n" not in str(e)


@_examples(100)
@given(
    body=st.text(max_size=300) | json_values.map(json.dumps),
    ext=st.sampled_from([".yaml", ".json"]),
)
def test_recipe_files_end_in_a_config_error_or_a_recipe(
    tmp_path_factory, body: str, ext: str
) -> None:
    path = tmp_path_factory.mktemp("recipes") / f"r{ext}"
    path.write_text(body, encoding="utf-8")
    try:
        parse_recipe(str(path))
    except ConfigError as e:
        assert "\n" not in str(e)


# --- uploads -----------------------------------------------------------------------


def _upload(filename: str, data: bytes) -> None:
    try:
        text = text_from_upload(filename, data, max_bytes=1 << 16, max_text=1 << 16)
    except DataError as e:
        assert str(e).startswith(filename)
    else:
        assert text.strip() and len(text.encode("utf-8")) <= (1 << 16) + 3


texts = st.lists(st.text(max_size=60) | st.none(), max_size=8)


def _as_file(ext: str, rows: list[str | None], raw: bytes) -> bytes:
    """Mostly well-formed files of type ``ext`` made of ``rows``; sometimes raw bytes."""
    if ext == ".txt":
        return "\n".join(r or "" for r in rows).encode("utf-8")
    if ext == ".jsonl":
        return "\n".join(json.dumps({"text": r}) for r in rows).encode("utf-8")
    if ext == ".csv":
        import pandas as pd

        return pd.DataFrame({"text": rows}).to_csv(index=False).encode("utf-8")
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame({"text": rows}).to_parquet(buf)
    return buf.getvalue()


@pytest.mark.parametrize("ext", UPLOAD_EXTENSIONS)
@_examples(150)
@given(rows=texts, raw=st.binary(max_size=400), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_uploads_end_in_a_data_error_or_text(ext: str, rows: list, raw: bytes, flips: list) -> None:
    _upload(f"f{ext}", raw)  # arbitrary bytes
    good = bytearray(_as_file(ext, rows, raw))
    _upload(f"f{ext}", bytes(good))
    for f in flips:  # a corrupted copy of a well-formed file
        if good:
            good[f % len(good)] ^= 0x5A
    _upload(f"f{ext}", bytes(good))


# --- bundles -----------------------------------------------------------------------

KEYS = ["fingerprint", "model", "recipe_label", "spec", "result", "origin", "created_at",
        "started_at", "finished_at", "sweep_id", "source_id", "layers", "perplexity",
        "top1_agreement", "nominal_bits", "recipe", "name"]  # fmt: skip


def _good_run(i: int) -> dict[str, Any]:
    return {
        "fingerprint": {"model": "m", "seed": i},
        "model": "m",
        "recipe_label": "rtn-int8",
        "spec": {"recipe": [{"method": "rtn"}]},
        "result": {"perplexity": 10.0 + i, "top1_agreement": 0.5},
        "layers": [{"name": "l0", "rel_error": 0.1}],
    }


@st.composite
def mutated_bundles(draw: st.DrawFn) -> Any:
    b: dict[str, Any] = {
        "format": "compresslab-bundle",
        "version": 1,
        "exported_by": "a@b",
        "runs": [_good_run(i) for i in range(draw(st.integers(0, 3)))],
    }
    for _ in range(draw(st.integers(0, 4))):  # set one field somewhere to a random value
        node: Any = b
        for _ in range(draw(st.integers(0, 3))):
            if isinstance(node, dict) and node:
                node = node[draw(st.sampled_from(sorted(node)))]
            elif isinstance(node, list) and node:
                node = node[draw(st.integers(0, len(node) - 1))]
        if isinstance(node, dict):
            node[draw(st.sampled_from(KEYS))] = draw(json_values)
    return b


@_examples(400)
@given(
    raw=mutated_bundles().map(lambda b: json.dumps(b, allow_nan=True))
    | st.binary(max_size=300)
    | json_values.map(json.dumps)
)
def test_bundles_end_in_a_bundle_error_or_a_plan(raw: Any) -> None:
    try:
        exporter, runs = bundle.parse_bundle(raw)
    except bundle.BundleError as e:
        assert "\n" not in str(e)
        return
    plan = bundle.plan_import(runs, exporter, set())
    for r in plan.new:  # what import_bundle writes must be storable JSON
        json.dumps([r["spec"], r["result"], r["fingerprint"], r.get("layers")], allow_nan=False)
        assert all(math.isfinite(float(r.get(k) or 0)) for k in ("created_at", "finished_at"))


# --- sweeps and settings -----------------------------------------------------------


@_examples(300)
@given(
    text=st.text(max_size=40)
    | st.tuples(st.text("abcdefghijklmnopqrstuvwxyz_", max_size=10), st.lists(
        st.sampled_from(["0", "0.1", "-1", "1e308", "nan", "inf", "x", "", "5", "0.0001"]), max_size=4
    )).map(lambda t: f"{t[0]}={':'.join(t[1]) if len(t[1]) == 3 else ','.join(t[1])}")
)  # fmt: skip
def test_sweep_arguments_end_in_a_config_error_or_values(text: str) -> None:
    try:
        name, values = parse_sweep_arg(text)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert name and 0 < len(values) <= 50 and all(math.isfinite(v) for v in values)


@_examples(200)
@given(
    ev=st.dictionaries(
        st.sampled_from(["ctx", "eval_tokens", "prompt_len", "decode_tokens", "repeats", "x"]),
        json_values | st.integers(-(10**9), 10**9),
        max_size=4,
    )
)
def test_eval_settings_end_in_a_value_error_or_a_spec(ev: dict[str, Any]) -> None:
    try:
        spec, _ = build_spec("demo", [{"method": "rtn"}], text_exists=bool, eval_settings=ev)
    except ValueError as e:  # ConfigError, DataError, or EvalSettings' range message
        assert "\n" not in str(e)
    else:
        assert spec.eval.eval_tokens <= 2**19


# --- query parameters ------------------------------------------------------------------


@_examples(500)
@given(st.text(max_size=1200) | st.from_regex(r"[0-9²³¹٣, x-]{0,60}", fullmatch=True))
def test_query_ids_yield_few_small_ascii_ids(value: str) -> None:
    from ui.shell import MAX_QUERY_IDS, query_ids

    ids = query_ids(value)
    assert len(ids) <= MAX_QUERY_IDS and len(set(ids)) == len(ids)
    assert all(isinstance(i, int) and 0 <= i < 10**12 for i in ids)
    assert all(str(i) in value for i in ids)


@pytest.mark.parametrize("value", ["²", "1,²,3", "9" * 12, "-1", "1e3", "٣", "x" * 5000, ""])
def test_run_and_outlier_pages_survive_hostile_run_parameters(db_url, value: str) -> None:
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parent.parent / "app.py")
    for page in ("app_pages/run.py", "app_pages/outliers.py"):
        at = AppTest.from_file(app, default_timeout=90)
        at.run()
        at.query_params["run"] = value
        at.switch_page(page).run()
        assert not at.exception, (page, value, [e.message for e in at.exception])
