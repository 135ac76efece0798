"""What every export folder shares: the weights file, config.json, the tokenizer, a README
(recipe, metrics, fingerprint), written under a temporary name and moved into place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.paths import temp_path

WEIGHTS_FILE = "model.safetensors"


def unique_state(model: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
    """``model``'s state dict without the keys owned by the modules in ``skip`` (those
    export their own tensors) and with each storage once (tied embeddings)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, t in model.state_dict().items():
        if key.rsplit(".", 1)[0] in skip:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = t.detach().contiguous().cpu()
    return out


def json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=1, sort_keys=True, default=str) + "\n```\n"


def run_sections(recipe: Any, metrics: dict[str, Any] | None, fingerprint: Any) -> list[str]:
    """The README's part about the run the folder came from."""
    return [
        "## Recipe\n",
        json_block(recipe),
        "## Metrics\n",
        json_block(metrics or {}),
        "## Fingerprint\n",
        json_block(fingerprint or {}),
    ]


def write_folder(
    model: nn.Module,
    out: str | Path,
    state: dict[str, torch.Tensor],
    *,
    config: dict[str, Any],
    tokenizer: Any,
    readme: str,
) -> Path:
    """Write ``state`` (safetensors), ``config`` entries over the model's config.json, the
    tokenizer and ``readme`` to ``out``; a killed export leaves only a temporary folder
    (named for this process: ``workers gc`` removes it)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out, ".export")
    tmp.mkdir(parents=True)
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), {"format": "pt"})
        _write_config(model, tmp, config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(readme)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_config(model: nn.Module, folder: Path, entries: dict[str, Any]) -> None:
    model.config.save_pretrained(folder)
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("quantization_config", None)
    cfg.update(entries)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def _publish(tmp: Path, out: Path) -> None:
    """Move the written folder into place (replacing the files of an older export)."""
    if not out.exists():
        tmp.rename(out)
        return
    for f in tmp.iterdir():
        f.replace(out / f.name)
