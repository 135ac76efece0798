"""Models that ship with CompressLab.

``demo/`` holds a small Llama-architecture model (with its own byte-level BPE
tokenizer) trained by ``python -m core.zoo.train_demo`` on the Python standard
library; see ``demo/README.md`` for its card and ``demo/heldout_eval.json`` for
its recorded held-out figures.
"""

from pathlib import Path

DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent / "demo"
DEMO_EVAL_FILE: Path = DEMO_MODEL_DIR / "heldout_eval.json"

__all__ = ["DEMO_EVAL_FILE", "DEMO_MODEL_DIR"]
