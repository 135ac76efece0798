"""New run: model, recipe, calibration and evaluation settings -> one queued job."""

from __future__ import annotations

import streamlit as st

from ui import (
    annotations,
    auth,
    estimate_view,
    forms,
    modes_view,
    seed_view,
    shell,
    sweep_view,
    tasks_view,
)
from ui.submit import steps_from_json, submit_run, submit_sweep_run

sf = shell.session()
st.title("New run")
st.caption(
    "Compose a job; a worker runs it in the background. Parameters are checked against each "
    "method's allowed values before anything is queued."
)
for not_filled in (  # the links of Clone into New run and of Sensitivity's kept recipe
    annotations.prefill_from_clone_param(sf, st.query_params),
    forms.take_prefill_param(st.session_state, st.query_params),
):
    if not_filled:
        st.warning(not_filled, icon=":material/edit_note:")
prefilled_from = forms.apply_prefill(st.session_state)
if prefilled_from:
    st.session_state["prefill_note"] = prefilled_from
forms.keep_form_state(st.session_state)  # what was typed survives a visit to another page
if st.session_state.get("prefill_note"):
    st.info(
        f"Pre-filled from {st.session_state['prefill_note']}: check the recipe below, "
        "then queue it.",
        icon=":material/edit_note:",
    )

st.subheader("1. Model")
model = forms.model_picker()

st.subheader("2. Recipe")
mode, recipe, recipe_name = forms.recipe_picker()

st.subheader("3. Data")
calib, eval_set = forms.data_pickers(sf, "calib_set", "eval_set", upload_calib=True)

st.subheader("4. Evaluation settings")
ev, cs = forms.eval_settings()
protocol = seed_view.protocol_picker()  # default, or as gptq/wanda draw windows
outputs = tasks_view.outputs_picker()  # task presets, generation prompts

st.subheader("5. Memory estimate")
try:
    estimate_steps = steps_from_json(recipe) if mode == "JSON" else recipe
except ValueError:
    estimate_steps = None
estimate_view.show(model, estimate_steps, cs, calib, sf)
modes_view.show(model, estimate_steps, cs)  # in memory or one block at a time

keep = st.checkbox(
    "Keep the compressed model for download",
    value=False,
    key="save_model",
    help="Saved by the worker in its data folder (safetensors in the real storage format, "
    "plus a config describing the quantization); the run's page offers it as a .zip.",
)
problems = forms.form_problems(model, mode, recipe)
if problems:
    st.error("Fix first: " + "; ".join(problems), icon=":material/block:")
if st.button(
    "Queue run",
    type="primary",
    icon=":material/play_arrow:",
    disabled=bool(problems),
    help="Disabled while a field above is wrong (its message is under it)." if problems else None,
):
    try:
        steps = steps_from_json(recipe) if mode == "JSON" else recipe
        job_id = submit_run(
            sf,
            model,
            steps,
            recipe_name,
            calib,
            eval_set,
            ev,
            cs,
            keep,
            owner=auth.current_user(),
            protocol=protocol,
            **outputs,
        )
    except ValueError as e:  # ConfigError, DataError and bad settings: say what is allowed
        st.error(f"Not queued: {e}")
    else:
        st.session_state.pop("prefill_note", None)
        shell.queued(f"Queued job #{job_id} ({model}).")  # reruns: the sidebar counts it
shell.show_queued()

with st.expander("Sweep one parameter instead (one run per value, compared on Compare)"):
    sweep = sweep_view.sweep_form(estimate_steps)
    if sweep is not None and st.button("Queue sweep", icon=":material/stacked_line_chart:"):
        index, param, values = sweep
        try:
            sweep_id, n = submit_sweep_run(
                sf,
                model,
                estimate_steps or [],
                recipe_name,
                calib,
                eval_set,
                ev,
                cs,
                step_index=index,
                param=param,
                owner=auth.current_user(),
                values=values,
            )
        except ValueError as e:
            st.error(f"Not queued: {e}")
        else:
            shell.queued(
                f"Queued a sweep of {n} runs over {param} (sweep {sweep_id[:8]}).",
                "Follow them on Runs",
            )

with st.expander("Repeat over calibration seeds instead (mean and spread on Compare)"):
    n_seeds = seed_view.seed_count()
    if st.button("Queue seed group", icon=":material/scatter_plot:", disabled=bool(problems)):
        try:
            sweep_id = seed_view.submit_seed_group(
                sf,
                n_seeds,
                owner=auth.current_user(),
                model=model,
                steps=estimate_steps or [],
                recipe_name=recipe_name,
                calib=calib,
                eval_set=eval_set,
                eval_settings=ev,
                calib_settings=cs,
                protocol=protocol,
            )
        except ValueError as e:
            st.error(f"Not queued: {e}")
        else:
            shell.queued(
                f"Queued {n_seeds} runs over calibration seeds (group {sweep_id[:8]}).",
                "Follow them on Runs",
            )
