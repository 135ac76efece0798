"""The New run form survives a visit to another page (issue 18): Streamlit drops the
values of widgets a page run did not draw; ui.forms.keep_form_state puts them back."""

from __future__ import annotations

from ui import forms


def test_values_dropped_by_another_page_come_back_and_others_do_not() -> None:
    state: dict = {
        "model_kind": "tiny-random",
        "recipe_mode": "Build steps",
        "step0:rtn:group_size": 64,
        "nr_task_preset": "code",
        "calib_set:upload": object(),  # an uploader: Streamlit refuses values set for it
        "lb_table": "not New run's",
    }
    assert forms.keep_form_state(state) == 0  # a New run rerun: remembers what is there
    for key in ("model_kind", "recipe_mode", "step0:rtn:group_size", "nr_task_preset"):
        del state[key]  # what Streamlit does while the Runs page is open
    del state["calib_set:upload"], state["lb_table"]
    assert forms.keep_form_state(state) == 4  # back on New run
    assert state["model_kind"] == "tiny-random" and state["step0:rtn:group_size"] == 64
    assert state["nr_task_preset"] == "code" and state["recipe_mode"] == "Build steps"
    assert "calib_set:upload" not in state and "lb_table" not in state


def test_a_prefill_wins_over_the_remembered_values() -> None:
    state: dict = {"recipe_mode": "Build steps"}
    forms.keep_form_state(state)
    del state["recipe_mode"]
    forms.prefill_new_run(state, model="demo", steps=[{"method": "rtn", "bits": 4}], source="#3")
    assert forms.apply_prefill(state) == "#3"
    forms.keep_form_state(state)
    assert state["recipe_mode"] == "JSON" and '"bits": 4' in state["recipe_json"]
