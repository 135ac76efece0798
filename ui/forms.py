"""New-run widgets: model choice, recipe steps generated from method configs, data, settings.

Widgets for a method's parameters are generated from its config dataclass
(``core.registry.describe_params``): a range becomes a bounded number input, choices
a select box, a bool a checkbox, and ``T | None`` an opt-in checkbox plus the input.
"""

from __future__ import annotations

import json
import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import streamlit as st

from core.data import DataError, list_text_sets, text_from_upload
from core.errors import ModelLoadError
from core.metrics import MAX_EVAL_TOKENS
from core.models import (
    DEMO_DIR,
    PRESETS,
    TINY_RANDOM,
    cached_hub_models,
    estimate_memory_bytes,
    folders_restricted,
    hub_offline,
    hub_reachable,
    is_folder_spec,
    model_source,
)
from core.recipe import NAMED_RECIPES, recipe_from_steps
from core.registry import (
    Method,
    allowed_text,
    describe_params,
    field_problem,
    get_method,
    methods,
)
from db import queue
from runs.spec import DEFAULT_CALIB, DEFAULT_EVAL, steps_from_json
from ui import auth
from ui.frames import fmt_bytes

UPLOAD_TYPES = ["txt", "jsonl", "csv", "parquet"]
OTHER_ID = "Another Hugging Face id..."


# --- model -----------------------------------------------------------------------


@st.cache_data(ttl=60, show_spinner=False)
def hub_status() -> tuple[bool, str]:
    """(reachable, why not); cached because the probe can take seconds when offline."""
    if hub_offline():
        return False, "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return False, "no connection to huggingface.co"
    return True, ""


def demo_available() -> bool:
    return (DEMO_DIR / "config.json").is_file()


def preset_note(model_id: str) -> str:
    n, note = PRESETS[model_id]
    fp32 = estimate_memory_bytes(n)
    int8 = estimate_memory_bytes(n, 1.0)
    return f"{n / 1e6:.0f} M parameters · {fmt_bytes(fp32)} as FP32, ≈{fmt_bytes(int8)} at int8 · {note}"


def _hub_model(prefix: str = "") -> str:
    reachable, why = hub_status()
    cached = cached_hub_models()
    if not reachable:
        st.warning(
            f"The Hugging Face hub is unreachable ({why}): only models already in the local "
            "cache will load. The demo model and local folders work offline."
        )
    options = [m for m in PRESETS if reachable or m in cached]
    options += [m for m in cached if m not in options]
    options.append(OTHER_ID)

    def label(m: str) -> str:
        tags = [t for t, on in (("cached", m in cached), ("preset", m in PRESETS)) if on]
        return f"{m} ({', '.join(tags)})" if tags else m

    choice = st.selectbox("Model id", options, format_func=label, key=f"{prefix}hub_choice")
    if choice == OTHER_ID:
        choice = st.text_input(
            "Hugging Face id", placeholder="org/name", key=f"{prefix}hub_other"
        ).strip()
    elif choice in PRESETS:
        st.caption(preset_note(choice))
    if not reachable and not cached:
        st.info("No model is in the local Hugging Face cache: pick the demo model or a folder.")
    return choice


def _folder_model(prefix: str = "") -> str:
    path = st.text_input(
        "Folder with config.json and weights",
        placeholder="/models/my-llama",
        key=f"{prefix}folder_path",
    ).strip()
    if path:
        note, ok = folder_note(path)
        (st.caption if ok else st.warning)(note)
    return path


def folder_note(path: str) -> tuple[str, bool]:
    """What the folder field says about ``path``, and whether it looks loadable. In a team
    mode a folder outside the model roots gets one message whether it exists or not."""
    try:
        source: str | Path | None = model_source(path)
    except ModelLoadError as e:
        if folders_restricted():
            return str(e), False
        source = None
    if not isinstance(source, Path):
        return f"{path} is not a folder on this machine (the worker must see it too).", False
    if not (source / "config.json").is_file():
        return f"{path} has no config.json: it does not look like a Transformers model.", False
    files = sorted(f.name for f in source.glob("*.safetensors")) or sorted(
        f.name for f in source.glob("*.bin")
    )
    return f"Found config.json and {len(files)} weight file(s).", True


def model_picker(prefix: str = "") -> str:
    """The model string a worker loads: 'demo', 'tiny-random', a hub id or a folder.
    ``prefix`` keeps the widget keys of two pages apart."""
    kinds = {
        "demo": "Bundled demo model (a small Llama trained on Python stdlib code)",
        "demo-long": "Bundled demo-long (the demo model trained further at 1,024 tokens with a "
        "start token: for KV-cache steps)",
        TINY_RANDOM: "Tiny Llama, random weights (for smoke tests: its perplexity means nothing)",
        "hub": "Hugging Face model",
        "folder": "Local folder",
    }
    default = 0 if demo_available() else 1
    kind = st.radio(
        "Model", list(kinds), format_func=kinds.get, index=default, key=f"{prefix}model_kind"
    )
    if kind == "demo":
        if not demo_available():
            st.warning(
                f"The demo model is not in this checkout yet ({DEMO_DIR}); the job will fail."
            )
        return "demo"
    if kind == "demo-long":
        return "demo-long"
    if kind == TINY_RANDOM:
        st.caption("Random weights: use it to check the pipeline, not to compare methods.")
        return TINY_RANDOM
    if kind == "hub":
        return _hub_model(prefix)
    return _folder_model(prefix)


# --- recipe ----------------------------------------------------------------------


def allowed(p: dict[str, Any]) -> str:
    """What a parameter allows, in the words its refusal uses ("a power of two in [32, 256]")."""
    if not p["choices"] and p["min"] is None and p["max"] is None and not p.get("power_of_two"):
        return ""
    meta = {"choices": p["choices"], "min": p["min"], "max": p["max"]}
    return allowed_text({**meta, "pow2": p.get("power_of_two")})


def _field_check(config_cls: type | None, name: str, value: Any) -> Any:
    """Show the refusal of ``value`` under its field (as the config would word it)."""
    problem = field_problem(config_cls, name, value) if config_cls is not None else None
    if problem:
        st.error(problem, icon=":material/error:")
    return value


def param_widget(p: dict[str, Any], key: str, config_cls: type | None = None) -> Any:
    """One widget for one config field, from its type, range or choices; with
    ``config_cls``, a wrong value gets its refusal under the field at once."""
    types = p["type"].split("|")
    optional = "NoneType" in types
    base = next((t for t in types if t != "NoneType"), "str")
    name, default = p["name"], p["default"]
    helptext = " · ".join(x for x in (p["help"], allowed(p) and f"allowed: {allowed(p)}") if x)
    if optional and not st.checkbox(
        f"set {name}", value=default is not None, key=f"{key}:on", help=f"unset: None. {helptext}"
    ):
        return None
    return _field_check(config_cls, name, _value_widget(p, key, base, helptext))


def _value_widget(p: dict[str, Any], key: str, base: str, helptext: str) -> Any:
    name, default = p["name"], p["default"]
    if p["choices"]:
        choices = list(p["choices"])
        index = choices.index(default) if default in choices else 0
        return st.selectbox(name, choices, index=index, key=key, help=helptext)
    if base == "bool":
        return st.checkbox(name, value=bool(default), key=key, help=helptext)
    if base in ("int", "float"):
        cast = int if base == "int" else float
        lo = cast(p["min"]) if p["min"] is not None else None
        hi = cast(p["max"]) if p["max"] is not None else None
        value = cast(default) if default is not None else (lo if lo is not None else cast(0))
        if base == "int":
            step: Any = 1
        else:
            step = (hi - lo) / 100 if lo is not None and hi is not None else 0.01
        # No min/max on the widget: Streamlit would silently keep the last valid value,
        # while the config's own rule refuses it under the field, saying what is allowed.
        out = cast(st.number_input(name, value=value, step=step, key=key, help=helptext))
        if allowed(p):
            st.caption(f"allowed: {allowed(p)}")
        return out
    return st.text_input(
        name, value="" if default is None else str(default), key=key, help=helptext
    )


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


CARD_QUESTIONS = (
    ("1. Needs a calibration set?", lambda c: "yes" if c.calibration else "no"),
    ("2. Static or dynamic?", lambda c: c.static_or_dynamic),
    ("3. Weights only or activations too?", lambda c: c.scope),
    ("4. Parameters learned or heuristic?", lambda c: c.parameters),
    ("5. Hardware support", lambda c: c.hardware),
    ("6. Memory saving", lambda c: c.memory),
    ("6. Speed (space saving is not a speed-up)", lambda c: c.speed),
)


def method_card(cls: type[Method], expanded: bool = True) -> None:
    """The six questions every method answers (see CONCEPTS.md)."""
    card = cls.card
    with st.expander(f"Method card: {cls.name} ({cls.kind})", expanded=expanded):
        st.markdown(card.idea)
        rows = "\n".join(f"| {q} | {a(card)} |" for q, a in CARD_QUESTIONS)
        st.markdown("| Question | Answer |\n|---|---|\n" + rows)
        if card.reference:
            st.caption(f"Reference: {card.reference}")


def step_editor(i: int, prefix: str = "") -> dict[str, Any]:
    """Widgets for recipe step ``i``; returns the flat step dict."""
    key = f"{prefix}step{i}"
    registered = list(methods())
    names = [m.name for m in registered]
    kinds = {m.name: m.kind for m in registered}
    with st.container(border=True):
        default = names.index("rtn") if "rtn" in names else 0
        method = st.selectbox(
            f"Step {i + 1}: method",
            names,
            index=default,
            format_func=lambda n: f"{n} ({kinds[n]})",
            key=f"{key}:method",
        )
        cls = get_method(method)
        params = describe_params(cls.config_cls)
        values: dict[str, Any] = {}
        cols = st.columns(3)
        for j, p in enumerate(params):
            with cols[j % 3]:
                values[p["name"]] = param_widget(
                    p, f"{key}:{method}:{p['name']}", config_cls=cls.config_cls
                )
        _step_check(cls, values)
        c1, c2 = st.columns(2)
        targets = c1.text_input(
            "targets (comma-separated name patterns; re:<regex> allowed)",
            "*",
            key=f"{key}:targets",
        )
        ignore = c2.text_input("ignore (patterns excluded)", "lm_head", key=f"{key}:ignore")
        method_card(cls, expanded=(i == 0))
    return {"method": method, **values, "targets": _patterns(targets), "ignore": _patterns(ignore)}


def _step_check(cls: type[Method], values: dict[str, Any]) -> None:
    """A rule between fields (each field passed its own check): its refusal under the step."""
    if any(field_problem(cls.config_cls, k, v) for k, v in values.items()):
        return  # already said under the field
    try:
        cls.config_cls.from_dict(values)
    except ValueError as e:
        st.error(f"{cls.name}: {e}", icon=":material/error:")


def recipe_problem(mode: str, recipe: Any) -> str | None:
    """Why the recipe as composed cannot be queued (the words the fields show), or None."""
    try:
        steps = steps_from_json(recipe) if mode == "JSON" else recipe
        recipe_from_steps(list(steps))
    except ValueError as e:
        return str(e)
    return None


def form_problems(model: str, mode: str, recipe: Any) -> list[str]:
    """What keeps New run's Queue button disabled: no model chosen, a recipe refused."""
    out = [] if model.strip() else ["choose a model"]
    problem = recipe_problem(mode, recipe)
    return out + ([problem] if problem else [])


def _add_step() -> None:
    st.session_state["n_steps"] = st.session_state.get("n_steps", 1) + 1


def _remove_step() -> None:
    st.session_state["n_steps"] = max(1, st.session_state.get("n_steps", 1) - 1)


RECIPE_MODES = ("Named recipe", "Build steps", "JSON")


def recipe_picker() -> tuple[str, Any, str]:
    """(mode, steps or JSON text, recipe name). JSON text is parsed when the run is queued."""
    mode = st.radio("Recipe", RECIPE_MODES, horizontal=True, key="recipe_mode")
    if mode == "Named recipe":
        names = list(NAMED_RECIPES)
        name = st.selectbox(
            "Named recipe",
            names,
            index=names.index("rtn-int8") if "rtn-int8" in names else 0,
            key="named_recipe",
        )
        steps = NAMED_RECIPES[name]
        body = "[\n" + ",\n".join("  " + json.dumps(s) for s in steps) + "\n]"
        st.code(body if steps else "[]  # no compression: the baseline", language="json")
        for s in steps:
            method_card(get_method(s["method"]), expanded=False)
        return mode, steps, name
    if mode == "Build steps":
        n = st.session_state.get("n_steps", 1)
        steps = [step_editor(i) for i in range(n)]
        c1, c2, _ = st.columns([1, 1, 4])
        c1.button("Add step", on_click=_add_step, icon=":material/add:")
        c2.button("Remove last step", on_click=_remove_step, disabled=n <= 1)
        return mode, steps, ""
    example = json.dumps(NAMED_RECIPES.get("rtn-int8", []), indent=1)
    text = st.text_area(
        "Recipe as JSON: a list of steps, each {method, <parameters>, targets, ignore}",
        example,
        height=160,
        key="recipe_json",
    )
    problem = recipe_problem(mode, text)
    if problem:
        st.error(problem, icon=":material/error:")
    return mode, text, ""


# --- data and settings -----------------------------------------------------------


def _set_label(sets: dict[str, dict[str, Any]], uploads: dict[str, Any]) -> Any:
    def label(name: str) -> str:
        if name in uploads:
            b = uploads[name]
            return f"{b.filename}  (upload, {fmt_bytes(b.n_bytes)}, sha256 {b.sha256[:12]})"
        s = sets[name]
        return f"{name}: {s['description']}" + ("  (needs the hub)" if s["needs_hub"] else "")

    return label


def _handle_upload(sf: queue.Factory, key: str) -> None:
    """Validate an uploaded file and store it; on a DataError nothing is stored."""
    up = st.file_uploader(
        "Or upload a text (.txt whole file; .jsonl / .csv / .parquet: the 'text' field)",
        type=UPLOAD_TYPES,
        key=f"{key}:upload",
    )
    if up is None:
        return
    try:
        text = text_from_upload(up.name, up.getvalue())
    except DataError as e:
        st.error(str(e))
        return
    name = queue.store_text(sf, up.name, text, owner=auth.current_user())
    st.success(f"Stored {up.name} as {name} ({len(text):,} characters).")
    marker = f"{key}:uploaded"
    if st.session_state.get(marker) != up.file_id:  # select it once, then leave the choice free
        st.session_state[marker] = up.file_id
        st.session_state[key] = name


def data_pickers(
    sf: queue.Factory, calib_key: str, eval_key: str, upload_calib: bool
) -> tuple[str, str]:
    """(calibration set, evaluation set) side by side; only calibration texts are uploaded
    (an evaluation set compares runs only when everyone has it)."""
    d1, d2 = st.columns(2)
    with d1:
        calib = text_set_picker(
            sf, "Calibration set", key=calib_key, default=DEFAULT_CALIB, upload=upload_calib
        )
    with d2:
        eval_set = text_set_picker(
            sf, "Evaluation set", key=eval_key, default=DEFAULT_EVAL, upload=False
        )
    return calib, eval_set


def text_set_picker(sf: queue.Factory, label: str, key: str, default: str, upload: bool) -> str:
    """A registered text set or a stored upload; optionally an uploader that adds one."""
    slot = st.container()  # the select box is drawn above the uploader that may preselect it
    if upload:
        _handle_upload(sf, key)
    sets = {s["name"]: s for s in list_text_sets()}
    uploads = {b.name: b for b in queue.list_texts(sf)}
    options = list(sets) + list(uploads)
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    return slot.selectbox(label, options, format_func=_set_label(sets, uploads), key=key)


def eval_settings(prefix: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """(evaluation settings, calibration settings) as plain dicts."""
    c = st.columns(5)
    ctx = c[0].number_input("Context length (tokens)", 16, 8192, 256, step=16, key=f"{prefix}ctx")
    eval_tokens = c[1].number_input(
        "Evaluation tokens",
        16,
        MAX_EVAL_TOKENS,
        4096,
        step=256,
        key=f"{prefix}eval_tokens",
        help="The baseline's log-prob cache takes windows x ctx x vocabulary x 2 bytes; a job "
        "whose cache would pass the cap (COMPRESSLAB_MAX_CACHE_BYTES) or the free disk is "
        "refused before it computes anything.",
    )
    n_samples = c[2].number_input("Calibration samples", 1, 4096, 32, key=f"{prefix}calib_samples")
    seq_len = c[3].number_input(
        "Calibration length (tokens)", 8, 8192, 256, step=8, key=f"{prefix}seq_len"
    )
    seed = c[4].number_input("Seed", 0, 2**31 - 1, 0, key=f"{prefix}seed")
    with st.expander("Latency measurement"):
        l1, l2, l3 = st.columns(3)
        prompt_len = l1.number_input(
            "Prompt length (tokens)", 1, 8192, 128, key=f"{prefix}prompt_len"
        )
        decode = l2.number_input("Decode steps timed", 1, 1024, 16, key=f"{prefix}decode_tokens")
        repeats = l3.number_input("Repeats (median reported)", 1, 100, 5, key=f"{prefix}repeats")
    ev = {
        "ctx": int(ctx),
        "eval_tokens": int(eval_tokens),
        "prompt_len": int(prompt_len),
        "decode_tokens": int(decode),
        "repeats": int(repeats),
    }
    cs = {"n_samples": int(n_samples), "seq_len": int(seq_len), "seed": int(seed)}
    return ev, cs


# --- pre-filling New run from another page -------------------------------------------

PREFILL_KEY = "prefill_run"  # a pending pre-fill (form state only: nothing about jobs)
PREFILL_PARAM = "prefill"  # New run's query parameter naming a kept pre-fill's slot
MAX_PARAM_CHARS = 40  # a longer pre-fill parameter is nonsense: refused, not echoed whole


def prefill_new_run(
    state: MutableMapping[str, Any],
    *,
    model: str,
    steps: list[dict[str, Any]],
    source: str,
    calib: str | None = None,
    eval_set: str | None = None,
    eval: dict[str, Any] | None = None,
    calib_settings: dict[str, Any] | None = None,
    slot: str | None = None,
) -> None:
    """Ask the New run page to open with this model, recipe (as JSON) and settings: on
    its next run, or, with ``slot``, when it is opened with ``?prefill=<slot>`` (a page
    link; see :func:`take_prefill_param`)."""
    state[PREFILL_KEY if slot is None else f"{PREFILL_KEY}:{slot}"] = {
        "model": model,
        "steps": steps,
        "source": source,
        "calib": calib,
        "eval_set": eval_set,
        "eval": eval or {},
        "calib_settings": calib_settings or {},
    }


def _model_keys(model: str) -> dict[str, Any]:
    if model in ("demo", "demo-long", TINY_RANDOM):
        return {"model_kind": model}
    if is_folder_spec(model):
        return {"model_kind": "folder", "folder_path": model}
    return {"model_kind": "hub", "hub_choice": OTHER_ID, "hub_other": model}


# New run widget keys of the evaluation / calibration settings, by settings field.
_EVAL_KEYS = {k: k for k in ("ctx", "eval_tokens", "prompt_len", "decode_tokens", "repeats")}
_CALIB_KEYS = {"n_samples": "calib_samples", "seq_len": "seq_len", "seed": "seed"}


def pop_param(params: MutableMapping[str, Any], name: str) -> str | None:
    """A query parameter New run acts on once, removed as it is read (so a reload keeps
    what was typed since); None where absent."""
    value = params.get(name)
    if value is None:
        return None
    del params[name]
    return str(value)


def take_prefill_param(
    state: MutableMapping[str, Any], params: MutableMapping[str, Any]
) -> str | None:
    """New run's ``prefill`` query parameter (:func:`pop_param`): make the pre-fill kept
    in that slot the pending one. Returns why not, None when done or when there was no
    parameter."""
    name = pop_param(params, PREFILL_PARAM)
    if name is None:
        return None
    pre = state.get(f"{PREFILL_KEY}:{name}") if len(name) <= MAX_PARAM_CHARS else None
    if not pre:
        return (
            "The recipe this link pre-fills was kept in another browser tab or session: "
            "open it again from the page it came from."
        )
    state[PREFILL_KEY] = pre
    return None


def apply_prefill(state: MutableMapping[str, Any]) -> str | None:
    """Move a pending pre-fill into the New run widgets' keys; call before they are drawn.
    Returns where it came from (for a note on the page), None if there was none."""
    pre = state.pop(PREFILL_KEY, None)
    if not pre:
        return None
    state.update(_model_keys(str(pre["model"])))
    state["recipe_mode"] = "JSON"
    state["recipe_json"] = "[\n" + ",\n".join("  " + json.dumps(s) for s in pre["steps"]) + "\n]"
    for name, key in (("calib", "calib_set"), ("eval_set", "eval_set")):
        if pre.get(name):
            state[key] = pre[name]
    for field, key in _EVAL_KEYS.items():
        if field in pre["eval"]:
            state[key] = int(pre["eval"][field])
    for field, key in _CALIB_KEYS.items():
        if field in pre["calib_settings"]:
            state[key] = int(pre["calib_settings"][field])
    return str(pre["source"])


# --- the New run form survives a visit to another page --------------------------------

# Streamlit drops a widget's value when a page without it runs; these keys are copied
# aside on every New run rerun and put back when missing. Other New run widgets join by
# a key in FORM_KEYS or one that starts with "nr_" (or "step<i>:", the step editors').
FORM_KEYS = (
    "model_kind",
    "hub_choice",
    "hub_other",
    "folder_path",
    "recipe_mode",
    "named_recipe",
    "recipe_json",
    "calib_set",
    "eval_set",
    *_EVAL_KEYS.values(),
    *_CALIB_KEYS.values(),
    "save_model",
    "sweep_step",
    "task_preset",  # ui/tasks_view.py's New run widgets
    "task_custom",
    "task_limit",
    "gen_prompts",  # ui/generations_view.py's
)
_FORM_PATTERN = re.compile(r"^(nr_|step\d+:|sweep_param:)")
_SAVED_FORM = "_new_run_form"  # not a widget key: Streamlit keeps it across pages


def is_form_key(key: str) -> bool:
    return (key in FORM_KEYS or bool(_FORM_PATTERN.match(key))) and not key.endswith(":upload")


def keep_form_state(state: MutableMapping[str, Any]) -> int:
    """Put back the New run values Streamlit dropped while another page was open, then
    remember the current ones; call at the top of New run (after a pre-fill). Returns how
    many values were put back."""
    saved: dict[str, Any] = state.setdefault(_SAVED_FORM, {})
    missing = {k: v for k, v in saved.items() if k not in state}
    for k, v in missing.items():
        state[k] = v
    saved.update({k: state[k] for k in list(state.keys()) if is_form_key(str(k))})
    return len(missing)
