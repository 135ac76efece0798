"""Models saved by the layout before core.storage (save format version 1) still load.

``tests/data/saved_models_v0.tgz`` holds one folder per stored format, saved by main
db52d58, each with ``expected.pt``: the input ids and the logits the model gave before
saving. Loading converts each module to its current format (the three affine layouts
of that time become one) and must give the same logits.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from core.save import QUANT_CONFIG, SaveError, load_compressed, save_compressed
from core.storage import (
    AffineLinear,
    BitmaskSparseLinear,
    CastLinear,
    FP8Linear,
    LLMInt8Linear,
    NMSparseLinear,
    W8A8Linear,
)
from core.walk import find_linears

ARCHIVE = Path(__file__).parent / "data" / "saved_models_v0.tgz"

# folder -> the format it loads as, and the largest |logit difference| allowed.
# The affine, sparse, cast and fp8 modules rebuild the very same weights, so their logits
# match to float rounding of a different summation order (the int4 / int8 kernels;
# measured: exactly equal on this CPU);
# the int8-activation formats quantize activations the same way too.
CASES = {
    "rtn4-asym-g64": (AffineLinear, 1e-4),
    "gptq3-g64": (AffineLinear, 1e-4),
    "int4wo": (AffineLinear, 1e-4),
    "int8wo": (AffineLinear, 1e-4),
    "w8a8": (W8A8Linear, 1e-4),
    "llm-int8": (LLMInt8Linear, 1e-4),
    "fp8": (FP8Linear, 1e-5),
    "cast": (CastLinear, 1e-5),
    "wanda24": (NMSparseLinear, 1e-5),
    "magnitude50": (BitmaskSparseLinear, 1e-5),
}


@pytest.fixture(scope="module")
def legacy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("saved_v0")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root / "legacy"


def test_the_archive_holds_every_case(legacy_root: Path) -> None:
    assert {p.name for p in legacy_root.iterdir()} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_version_1_folder_loads_in_the_current_format(legacy_root: Path, name: str) -> None:
    cls, atol = CASES[name]
    folder = legacy_root / name
    assert json.loads((folder / QUANT_CONFIG).read_text())["version"] == 1
    expected = torch.load(folder / "expected.pt", weights_only=True)
    model = load_compressed(folder).model
    layers = {n: m for n, m in find_linears(model).items() if n != "lm_head"}
    assert layers and all(type(m) is cls for m in layers.values())
    with torch.no_grad():
        logits = model(expected["ids"]).logits
    assert (logits - expected["logits"]).abs().max().item() <= atol


@pytest.mark.parametrize("name", ["rtn4-asym-g64", "int8wo"])
def test_a_converted_model_saves_as_the_current_version(
    legacy_root: Path, name: str, tmp_path: Path
) -> None:
    model = load_compressed(legacy_root / name).model
    save_compressed(model, tmp_path)
    qcfg = json.loads((tmp_path / QUANT_CONFIG).read_text())
    assert qcfg["version"] == 2
    assert all(e["class"].startswith("core.storage.") for e in qcfg["modules"].values())
    ids = torch.load(legacy_root / name / "expected.pt", weights_only=True)["ids"]
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path).model(ids).logits, model(ids).logits)


def test_an_unknown_version_1_class_is_refused_with_how_to_rerun(
    legacy_root: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(legacy_root / "cast", folder)
    qcfg = json.loads((folder / QUANT_CONFIG).read_text())
    for entry in qcfg["modules"].values():
        entry["class"] = "core.layers.SomethingGone"
    (folder / QUANT_CONFIG).write_text(json.dumps(qcfg))
    with pytest.raises(SaveError, match="Re-run the recipe.*python3 -m workers run"):
        load_compressed(folder)
