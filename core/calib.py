"""Drawing calibration samples from a text: random windows of tokens, seeded.

Two protocols (their definitions, as the UI shows them, are in runs.catalogue):

- ``default``: the text's first tokens (a bounded prefix, no special tokens), windows
  at offsets drawn by a torch generator seeded with ``seed``.
- ``reference``: as the data utilities of IST-DASLab/gptq and locuslab/wanda draw them:
  the whole text tokenized as the model's tokenizer does by default (with BOS where
  it adds one), then ``random.seed(seed)`` and, per sample,
  ``i = random.randint(0, n - seq_len - 1)``, window ``ids[i : i + seq_len]``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

DEFAULT_PROTOCOL = "default"
REFERENCE_PROTOCOL = "reference"
PROTOCOLS: tuple[str, ...] = (DEFAULT_PROTOCOL, REFERENCE_PROTOCOL)


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of PROTOCOLS; ValueError saying which are allowed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is unknown; allowed: {', '.join(PROTOCOLS)}")
    return protocol


@dataclass(frozen=True)
class CalibSettings:
    n_samples: int = 32  # calibration sequences
    seq_len: int = 256  # tokens per sequence
    seed: int = 0  # seed of the window positions

    def __post_init__(self) -> None:
        if not 1 <= self.n_samples <= 4096:
            raise ValueError(f"n_samples={self.n_samples} is out of range: 1..4096")
        if not 8 <= self.seq_len <= 8192:
            raise ValueError(f"seq_len={self.seq_len} is out of range: 8..8192")

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_batches(
    tokenizer, text: str, settings: CalibSettings, protocol: str = DEFAULT_PROTOCOL
) -> list[torch.Tensor]:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random offsets, each (1, seq_len),
    drawn as ``protocol`` says (module docstring).

    A text shorter than one window gives a single shorter sample.
    """
    if check_protocol(protocol) == REFERENCE_PROTOCOL:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]  # special tokens as it adds them
        return reference_windows(ids, settings.n_samples, settings.seq_len, settings.seed)
    # Tokenize a bounded prefix: enough for many windows, cheap on huge sets.
    budget = settings.n_samples * settings.seq_len * 8 * 6  # ~6 bytes/token, 8x headroom
    ids = tokenizer(text[:budget], add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() <= settings.seq_len:
        return [ids.unsqueeze(0)]
    gen = torch.Generator().manual_seed(settings.seed)
    starts = torch.randint(0, ids.numel() - settings.seq_len, (settings.n_samples,), generator=gen)
    return [ids[s : s + settings.seq_len].unsqueeze(0) for s in starts.tolist()]


def reference_windows(
    ids: torch.Tensor, n_samples: int, seq_len: int, seed: int
) -> list[torch.Tensor]:
    """The reference draw over token ids ``ids`` (n,): a ``random.Random(seed)`` (the same
    sequence as ``random.seed(seed)`` on the module, without touching global state), and
    ``n_samples`` times ``i = randint(0, n - seq_len - 1)``, window ``ids[i : i + seq_len]``
    as (1, seq_len). Fewer than ``seq_len + 1`` tokens give the one shorter sample."""
    n = ids.numel()
    if n <= seq_len:
        return [ids.unsqueeze(0)]
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seq_len - 1) for _ in range(n_samples)]
    return [ids[i : i + seq_len].unsqueeze(0) for i in starts]
