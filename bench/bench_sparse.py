"""Forward latency of the sparse storage modules as ratios to a dense nn.Linear.

Run: ``python bench/bench_sparse.py``. Prints, per layer shape, the median time of one
forward (batch x tokens rows) for dense, 2:4, bitmask and CSR storage, each divided by
the dense time measured in the same run. On the CPU every sparse module rebuilds the
dense weight per forward, so ratios above 1 are expected: the saving is in memory.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.prune.masks import nm_mask, row_mask  # noqa: E402
from core.storage import BitmaskSparseLinear, CSRSparseLinear, NMSparseLinear  # noqa: E402


def median_ms(fn, x: torch.Tensor, repeats: int = 20) -> float:
    with torch.no_grad():
        fn(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} device=cpu")
    for out_f, in_f in ((256, 256), (1024, 4096)):
        lin = nn.Linear(in_f, out_f)
        w = lin.weight.detach()
        nm = w * nm_mask(w.abs(), 2, 4)
        un = w * row_mask(w.abs(), 0.5)
        mods = {
            "dense": lin,
            "2:4": NMSparseLinear.build(nm, lin.bias, n=2, m=4),
            "bitmask 50%": BitmaskSparseLinear.build(un, lin.bias),
            "csr 50%": CSRSparseLinear.build(un, lin.bias),
        }
        x = torch.randn(1, 128, in_f)
        base = median_ms(lin, x)
        row = ", ".join(f"{k} {median_ms(m, x) / base:.2f}x" for k, m in mods.items())
        print(f"{out_f}x{in_f}: dense {base:.3f} ms; {row}")


if __name__ == "__main__":
    main()
