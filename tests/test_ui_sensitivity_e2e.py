"""End to end, for real: the Sensitivity page queues a per-block sweep on the tiny random Llama,
a worker runs it, the page charts the cost per block and pre-fills New run with the mixed
recipe, which then runs too; the Outliers page shows the activation statistics the real
pipeline recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queue
from tests.test_ui_pages import _follow_link
from ui.frames import recipe_steps
from ui.shell import NEW_RUN, OUTLIERS, SENSITIVITY
from workers.runner import Runner

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _small_settings(at: AppTest) -> None:
    for key, value in (
        ("sens_ctx", 64),
        ("sens_eval_tokens", 256),
        ("sens_calib_samples", 2),
        ("sens_seq_len", 32),
        ("sens_prompt_len", 8),
        ("sens_decode_tokens", 2),
        ("sens_repeats", 1),
    ):
        at.number_input(key=key).set_value(value)


@pytest.mark.slow
def test_sensitivity_sweep_runs_and_feeds_new_run(sf, tmp_path: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(SENSITIVITY).run()
    at.radio(key="sens_model_kind").set_value("tiny-random").run()
    at.radio(key="sens_unit").set_value("block").run()
    at.number_input(key="sens_step0:rtn:bits").set_value(2).run()  # 2 bits: a visible cost
    _small_settings(at)
    next(b for b in at.button if b.label == "Queue sensitivity sweep").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    assert Runner(sf, cache_dir=tmp_path / "baselines").serve(poll_s=0.05, max_jobs=2) == 2
    jobs = [j for j in queue.list_jobs(sf) if j.sweep_id]
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error for j in jobs]

    at.run()
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(chart["data"][0]["x"]) == 2  # both blocks charted
    at.number_input(key="sens_keep").set_value(1).run()
    _follow_link(at, "Open this recipe in New run", NEW_RUN)
    assert at.title[0].value == "New run"
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.error, [e.value for e in at.error]
    assert Runner(sf, cache_dir=tmp_path / "baselines").serve(poll_s=0.05, max_jobs=1) == 1
    mixed = queue.list_jobs(sf)[0]
    assert mixed.status == "succeeded" and not mixed.sweep_id, mixed.error
    steps = recipe_steps(mixed)
    assert [s["bits"] for s in steps] == [2, 8] and steps[1]["targets"][0].endswith(".*")
    # The kept block ran in 8 bits, the other in 2: the stored schemes say so.
    schemes = {r.name: r.data["scheme"] for r in queue.layer_stats(sf, mixed.id)}
    kept = steps[1]["targets"][0][:-1]
    assert all(s.startswith("int8") for n, s in schemes.items() if n.startswith(kept))
    assert all(
        s.startswith("int2")
        for n, s in schemes.items()
        if n != "lm_head" and not n.startswith(kept)
    )

    at.query_params.update({"run": str(mixed.id)})
    at.switch_page(OUTLIERS).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Activation max |x|"] != "-"  # recorded by the real pipeline
    assert len(at.get("plotly_chart")) == 5
