"""Sharing runs: bundle export, validation, import deduplicated by recomputed fingerprint hash,
origins kept through a chain of teammates, layer statistics carried along, CSV export."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.recipe import NAMED_RECIPES
from db import queue
from ui import bundle
from ui.submit import submit_run

WORKER = "w"


def _finished(sf, name: str, ppl: float, device: str = "cpu") -> int:
    job_id = submit_run(
        sf, "tiny-random", NAMED_RECIPES[name], name, "stdlib-code", "stdlib-heldout", None, None
    )
    queue.claim(sf, WORKER, job_id=job_id)
    spec = queue.get_job(sf, job_id).spec
    fp = {"model": "tiny-random", "revision": "seed:0", "recipe": spec["recipe"], "device": device}
    layers = [{"name": "model.layers.0.mlp.up_proj", "rel_error": 0.02, "scheme": "int8"}]
    assert queue.complete(sf, job_id, WORKER, {"perplexity": ppl}, layers, fp)
    return job_id


def test_round_trip_into_another_database_with_origin_and_layers(sf, tmp_path) -> None:
    ids = [_finished(sf, "rtn-int8", 12.3), _finished(sf, "fp16", 12.0)]
    jobs = [queue.get_job(sf, i) for i in ids]
    layers = {i: [r.data for r in queue.layer_stats(sf, i)] for i in ids}
    raw = bundle.bundle_bytes(bundle.make_bundle(jobs, layers, origin="alice@lab", now=1.0))

    from db.session import session_factory

    other = session_factory(f"sqlite:///{tmp_path / 'bob.db'}")
    report = bundle.import_bundle(other, raw)
    assert report.exporter == "alice@lab" and report.duplicates == 0
    assert report.origins == {"alice@lab": 2}
    got = {j.recipe_label: j for j in queue.finished_runs(other)}
    assert set(got) == {"rtn-int8", "fp16"}
    assert got["rtn-int8"].result == {"perplexity": 12.3} and got["rtn-int8"].origin == "alice@lab"
    assert got["rtn-int8"].fingerprint_hash == jobs[0].fingerprint_hash
    assert [r.data["rel_error"] for r in queue.layer_stats(other, got["fp16"].id)] == [0.02]

    again = bundle.import_bundle(other, raw)  # importing twice adds nothing
    assert again.added == [] and again.duplicates == 2
    # Bob passes Alice's runs on: Carol sees Alice as their origin, not Bob.
    onward = bundle.make_bundle(queue.finished_runs(other), None, origin="bob@home")
    plan = bundle.plan_import(onward["runs"], "bob@home", set())
    assert {r["origin"] for r in plan.new} == {"alice@lab"}
    assert "layers" not in onward["runs"][0]


def test_dedup_uses_the_recomputed_hash_and_catches_repeats_inside_a_bundle(sf) -> None:
    job = queue.get_job(sf, _finished(sf, "rtn-int8", 12.3))
    b = bundle.make_bundle([job, job], None, origin="me")
    b["runs"][0]["fingerprint_hash"] = "forged"  # a stated hash is not trusted
    plan = bundle.plan_import(b["runs"], "me", set())
    assert len(plan.new) == 1 and len(plan.duplicates) == 1
    assert plan.new[0]["fingerprint_hash"] == job.fingerprint_hash
    assert bundle.import_bundle(sf, b).added == []  # already in this database
    gpu = json.loads(json.dumps(b))
    gpu["runs"][0]["fingerprint"]["device"] = "cuda"  # another device: another measurement
    assert len(bundle.import_bundle(sf, gpu).added) == 1


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "not a JSON file"),
        (b"[1, 2]", "not a CompressLab bundle"),
        (json.dumps({"format": "compresslab-bundle", "version": 99}).encode(), "version 99"),
        (json.dumps({"format": "compresslab-bundle", "version": 1}).encode(), '"runs" list'),
        (
            json.dumps({"format": "compresslab-bundle", "version": 1, "runs": [{"model": "m"}]}),
            "run 1 lacks fingerprint",
        ),
    ],
)
def test_bad_bundles_are_refused_with_a_reason(sf, raw, message) -> None:
    with pytest.raises(bundle.BundleError, match=message):
        bundle.import_bundle(sf, raw)
    assert queue.finished_runs(sf) == []


def test_csv_has_the_columns_shown() -> None:
    df = pd.DataFrame({"id": [1, 2], "recipe": ["a,b", "c"], "perplexity": [1.5, 2.0]})
    back = pd.read_csv(pd.io.common.BytesIO(bundle.runs_csv(df)))
    assert back.to_dict("list") == df.to_dict("list")
    assert "@" in bundle.default_origin()


# --- schema validation: bundles are untrusted input (issue 14) ----------------------


def _valid_bundle(n: int = 2) -> dict:
    from types import SimpleNamespace

    jobs = [
        SimpleNamespace(
            id=i + 1,
            fingerprint_hash="h",
            fingerprint={"model": "m", "recipe": {"sha256": str(i)}, "device": "cpu"},
            model="m",
            recipe_label="rtn-int8",
            spec={"model": "m", "recipe": [{"method": "rtn", "bits": 8}]},
            result={"perplexity": 12.5, "top1_agreement": 0.9, "weight_bytes": 1000},
            origin="local",
            created_at=1.0,
            started_at=2.0,
            finished_at=3.0,
            sweep_id=None,
        )
        for i in range(n)
    ]
    layers = {j.id: [{"name": "model.layers.0.mlp.up_proj", "rel_error": 0.01}] for j in jobs}
    return bundle.make_bundle(jobs, layers, origin="alice@lab", now=1.0)


def _deep(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.mark.parametrize(
    "where, value, message",
    [
        (("result", "perplexity"), "12", "run 2: result.perplexity must be a finite number >= 0"),
        (("result", "perplexity"), -1.0, "run 2: result.perplexity must be a finite number >= 0"),
        (
            ("result", "perplexity"),
            float("nan"),
            "run 2: result.perplexity must be a finite number",
        ),
        (("result", "weight_bytes"), True, "run 2: result.weight_bytes must be a finite number"),
        (("result", "top1_agreement"), 1.5, r"run 2: result.top1_agreement must be .* in 0..1"),
        (("result", "nominal_bits"), "4", "run 2: result.nominal_bits must be a list"),
        (("result", "extra_metric"), float("inf"), "run 2: result.extra_metric must be a finite"),
        (("model",), 5, "run 2: model must be text of 1..300 characters"),
        (("model",), "m" * 301, "run 2: model must be text of 1..300 characters"),
        (("fingerprint",), "x", "run 2: fingerprint must be a non-empty object"),
        (("fingerprint", "seed"), float("-inf"), "run 2: fingerprint.seed must be a finite"),
        (("created_at",), "yesterday", "run 2: created_at must be a finite number >= 0"),
        (("sweep_id",), ["a"], "run 2: sweep_id must be text of 1..64"),
        (("spec", "recipe"), "rtn", "run 2: spec.recipe must be a list of steps"),
        (("spec", "eval"), _deep(40), r"run 2: spec.eval(.a)+ must be nested at most 16 levels"),
        (("layers",), [1], r"run 2: layers\[0\] must be an object"),
        (("layers",), [{"rel_error": 1.0}], r"run 2: layers\[0\].name must be text"),
        (("result",), [], "run 2: result must be an object"),
    ],
)
def test_bundle_fields_are_checked_against_the_schema(where, value, message) -> None:
    b = _valid_bundle()
    target = b["runs"][1]
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    raw = json.dumps(b, allow_nan=True)  # NaN / Infinity as Python's json writes them
    with pytest.raises(bundle.BundleError, match=message):
        bundle.parse_bundle(raw)


def test_bundle_header_size_and_depth_are_checked() -> None:
    b = _valid_bundle()
    assert bundle.parse_bundle(json.dumps(b))[0] == "alice@lab"
    b["exported_by"] = {"user": "x"}
    with pytest.raises(bundle.BundleError, match="the bundle's exported_by must be text"):
        bundle.parse_bundle(json.dumps(b))
    with pytest.raises(bundle.BundleError, match="nested more than 16 levels"):
        bundle.parse_bundle(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(bundle.BundleError, match="over 64 MiB"):
        bundle.parse_bundle(b" " * (bundle.MAX_BUNDLE_BYTES + 1))


def test_a_bad_run_imports_nothing(sf) -> None:
    b = _valid_bundle()
    b["runs"][1]["result"]["perplexity"] = float("nan")
    with pytest.raises(bundle.BundleError, match="run 2: result.perplexity"):
        bundle.import_bundle(sf, json.dumps(b))
    assert queue.finished_runs(sf) == []
    assert len(bundle.import_bundle(sf, json.dumps(_valid_bundle())).added) == 2


def test_concurrent_imports_of_one_bundle_add_each_run_once(sf, monkeypatch) -> None:
    """Two imports race: both plan before either writes (the old check ran outside the
    write transaction); the unique import key refuses the second write and its re-plan
    finds the run already there."""
    import threading

    from db.models import Job

    job = queue.get_job(sf, _finished(sf, "rtn-int8", 12.3))
    b = bundle.make_bundle([job], None, origin="alice@lab")
    b["runs"][0]["fingerprint"]["device"] = "cuda"  # not in this database yet
    planned = threading.Barrier(2, timeout=30)
    real_plan = bundle.plan_import
    calls: list[int] = []

    def plan_then_wait(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        calls.append(len(plan.new))
        if len(calls) <= 2:  # the first plan of each import: both see the run as new
            planned.wait()
        return plan

    monkeypatch.setattr(bundle, "plan_import", plan_then_wait)
    reports: list[bundle.ImportReport] = []
    threads = [threading.Thread(target=lambda: reports.append(bundle.import_bundle(sf, b)))]
    threads.append(threading.Thread(target=lambda: reports.append(bundle.import_bundle(sf, b))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(len(r.added) for r in reports) == [0, 1]
    assert sorted(r.duplicates for r in reports) == [0, 1]
    with sf() as s:
        imported = s.query(Job).filter(Job.origin == "alice@lab").count()
    assert imported == 1


def test_local_reruns_of_one_recipe_are_never_refused(sf) -> None:
    a, b = _finished(sf, "rtn-int8", 12.3), _finished(sf, "rtn-int8", 12.4)
    ja, jb = queue.get_job(sf, a), queue.get_job(sf, b)
    assert ja.fingerprint_hash == jb.fingerprint_hash and ja.import_key is None
