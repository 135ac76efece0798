"""Made tests/data/saved_models_v0.tgz on main db52d58 (run from the repository root there).

Kept as the record of how the fixture was made; it imports modules that no longer exist.
"""

import sys

import torch

sys.path.insert(0, ".")
from core.models import byte_tokenizer, tiny_llama
from core.recipe import recipe_from_steps
from core.save import save_compressed
from core.walk import apply_recipe

GEN = torch.Generator().manual_seed(0)
CALIB = [torch.randint(0, 256, (1, 48), generator=GEN) for _ in range(2)]
IDS = torch.randint(0, 256, (1, 24), generator=GEN)
R = {
    "rtn4-asym-g64": [
        {"method": "rtn", "bits": 4, "symmetric": False, "granularity": "group", "group_size": 64}
    ],
    "gptq3-g64": [{"method": "gptq", "bits": 3, "group_size": 64}],
    "int8wo": [{"method": "int8-weight-only"}],
    "int4wo": [{"method": "int4-weight-only", "group_size": 64}],
    "w8a8": [{"method": "w8a8"}],
    "llm-int8": [{"method": "llm-int8"}],
    "fp8": [{"method": "fp8", "format": "e4m3"}],
    "cast": [{"method": "cast", "dtype": "bfloat16"}],
    "wanda24": [{"method": "wanda", "pattern": "2:4"}],
    "magnitude50": [{"method": "magnitude", "sparsity": 0.5}],
}
out = {}
for name, steps in R.items():
    torch.manual_seed(0)
    model = tiny_llama(hidden=64)
    try:
        recipe = recipe_from_steps(steps, name=name)
    except Exception as e:
        print("skip", name, e)
        continue
    apply_recipe(
        model,
        recipe,
        on_progress=lambda f, m: None,
        should_cancel=lambda: False,
        calib_batches=CALIB,
    )
    with torch.no_grad():
        ref = model(IDS).logits
    save_compressed(model, f"/tmp/base/legacy/{name}", recipe, byte_tokenizer())
    torch.save({"ids": IDS, "logits": ref}, f"/tmp/base/legacy/{name}/expected.pt")
    print(name, "ok")
