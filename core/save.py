"""Save a compressed model in its real storage format and load it back.

A saved folder holds:

- ``model.safetensors``: the compressed model's state dict as stored (packed integer
  weights, scales, zero points, FP8 and bitsandbytes buffers, the layers left in float);
  tensors shared by tied weights are written once.
- ``compresslab_quant.json``: the format version, the recipe, and for every compressed
  module its class and storage layout (``CompressedLinear.storage_config``). Version 2
  names the formats of ``core.storage``; folders of version 1 (the layout before it)
  are converted on load by :mod:`core.storage.legacy`.
- ``config.json`` (and the generation config) and the tokenizer files, in Hugging Face
  format, so that the float skeleton can be rebuilt without the original checkpoint.

``load_compressed`` rebuilds the float skeleton from ``config.json``, swaps in empty
compressed modules described by the JSON, and fills everything from the safetensors
file (strictly: a missing or unexpected tensor is an error).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.models import LoadedModel, content_hash, linearize_conv1d
from core.paths import temp_path
from core.recipe import Recipe
from core.storage import CompressedLinear
from core.storage.legacy import LEGACY_VERSION, LegacyLayoutError, convert_legacy

log = logging.getLogger(__name__)

QUANT_CONFIG = "compresslab_quant.json"
WEIGHTS = "model.safetensors"
FORMAT = "compresslab-compressed"
FORMAT_VERSION = 2  # 2: core.storage formats; 1: core.layers / layers_int8 / sparse
READABLE_VERSIONS = (LEGACY_VERSION, FORMAT_VERSION)


class SaveError(ValueError):
    """A model that cannot be saved or a folder that cannot be loaded; the message says why."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_class(path: str) -> type[CompressedLinear]:
    """The storage class named in the JSON: only CompressedLinear subclasses inside
    ``core`` are accepted (a saved folder never names arbitrary code to import)."""
    module, _, name = path.rpartition(".")
    if not module.startswith("core.") or not name.isidentifier():
        raise SaveError(f"refusing to load storage class {path!r}: not a core module")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, CompressedLinear)):
        raise SaveError(f"{path!r} is not a compressed storage class")
    return cls


def quant_config(model: nn.Module, recipe: Recipe | None = None) -> dict[str, Any]:
    """The JSON description of every compressed module of ``model``."""
    modules = {}
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedLinear):
            try:
                layout = mod.storage_config()
            except (TypeError, NotImplementedError) as e:
                raise SaveError(f"cannot save {name} ({type(mod).__name__}): {e}") from None
            modules[name] = {"class": _class_path(type(mod)), "scheme": mod.scheme(), **layout}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "recipe": recipe.to_list() if recipe is not None else None,
        "recipe_name": recipe.name if recipe is not None else "",
        "modules": modules,
    }


def _unshared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage written once (tied embeddings) and contiguous."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for k, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen[key] = k
        out[k] = t.detach().contiguous().cpu()
    return out


def save_compressed(
    model: nn.Module, folder: str | Path, recipe: Recipe | None = None, tokenizer: Any = None
) -> Path:
    """Write ``model`` (compressed in place by ``apply_recipe``) to ``folder``; returns it.

    Everything is written under a temporary name beside ``folder`` and renamed into place
    at the end, so a killed save leaves no folder that loads as a model (only a temporary
    one, removed by the next worker start or ``python -m workers gc``)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder)
    try:
        n_modules = _write_folder(model, tmp, recipe, tokenizer)
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %d compressed modules to %s", n_modules, folder)
    return folder


def _publish(tmp: Path, folder: Path) -> None:
    """Move a completely written ``tmp`` folder to ``folder``: one rename when ``folder``
    does not exist; else file by file with the quant config last, after the old one was
    removed (so ``folder`` never loads as a half-replaced model)."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    (folder / QUANT_CONFIG).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == QUANT_CONFIG):
        os.replace(f, folder / f.name)


def _write_folder(model: nn.Module, folder: Path, recipe: Recipe | None, tokenizer: Any) -> int:
    """Write the saved files into ``folder`` (created); the number of compressed modules."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    qcfg = quant_config(model, recipe)
    save_file(_unshared_state_dict(model), str(folder / WEIGHTS), metadata={"format": "pt"})
    if hasattr(model, "config"):
        model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    # Last: a folder is a saved model only once its quant config is there.
    (folder / QUANT_CONFIG).write_text(json.dumps(qcfg, indent=1, sort_keys=True))
    return len(qcfg["modules"])


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files in a saved folder."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def archive_path(folder: str | Path) -> Path:
    """Where :func:`archive` keeps the zip of a saved folder: beside it, ``<name>.zip``."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}.zip")


def archive(folder: str | Path) -> Path:
    """A zip of a saved folder, files at its top level (the download of a run's model),
    written to disk file by file (never built in memory) beside the folder; returns its
    path. An existing zip newer than every file of the folder is reused."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    if not files:
        raise SaveError(f"{folder} holds no files to archive")
    dest = archive_path(folder)
    newest = max(f.stat().st_mtime for f in files)
    if dest.is_file() and dest.stat().st_mtime >= newest:
        return dest
    tmp = temp_path(dest)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.relative_to(folder).as_posix())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def load_compressed(folder: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild a model saved by :func:`save_compressed`, in the same storage format."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from core.walk import replace_module

    folder = Path(folder)
    path = folder / QUANT_CONFIG
    if not path.is_file():
        raise SaveError(f"{folder} has no {QUANT_CONFIG}: not a saved compressed model")
    qcfg = json.loads(path.read_text())
    if qcfg.get("format") != FORMAT or qcfg.get("version") not in READABLE_VERSIONS:
        raise SaveError(
            f"{path} is format {qcfg.get('format')!r} version {qcfg.get('version')!r}; "
            f"this code reads {FORMAT!r} versions {READABLE_VERSIONS}"
        )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    linearize_conv1d(model)  # as load_model does: the saved layers are nn.Linear
    state = load_file(str(folder / WEIGHTS))
    for name, entry in qcfg["modules"].items():
        replace_module(model, name, _storage_module(name, entry, qcfg, state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise SaveError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.eval().to(device)
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=str(folder),
        revision=content_hash(folder),
        n_params=sum(p.numel() for p in model.parameters()),
        note=f"compressed: {qcfg.get('recipe_name') or 'recipe'}",
    )


def _storage_module(
    name: str, entry: dict[str, Any], qcfg: dict[str, Any], state: dict[str, torch.Tensor]
) -> CompressedLinear:
    """The module ``name`` of a saved folder: empty (``load_state_dict`` fills it) in the
    current version; converted from its saved tensors in version 1, whose tensors in
    ``state`` are replaced by the converted module's."""
    if qcfg["version"] == FORMAT_VERSION:
        return _resolve_class(entry["class"]).from_storage_config(entry)
    prefix = f"{name}."
    own = {k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)}
    try:
        mod = convert_legacy(entry, own)
    except LegacyLayoutError as e:
        recipe = json.dumps(qcfg.get("recipe"))
        raise SaveError(
            f"{name}: {e}. Re-run the recipe on the original model and save it again, e.g. "
            f"python3 -m workers run --model <model> --recipe '{recipe}'"
        ) from None
    state.update({prefix + k: v for k, v in mod.state_dict().items()})
    return mod


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that alias another key's storage (restored by ``tie_weights``)."""
    seen: dict[int, str] = {}
    tied = set()
    for k, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            tied.add(k)
        else:
            seen[ptr] = k
    return tied
