"""Drawing calibration samples from a text: random windows of tokens, seeded (as GPTQ does)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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


def calibration_batches(tokenizer, text: str, settings: CalibSettings) -> list[torch.Tensor]:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random offsets, each (1, seq_len).

    A text shorter than one window gives a single shorter sample.
    """
    # Tokenize a bounded prefix: enough for many windows, cheap on huge sets.
    budget = settings.n_samples * settings.seq_len * 8 * 6  # ~6 bytes/token, 8x headroom
    ids = tokenizer(text[:budget], add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() <= settings.seq_len:
        return [ids.unsqueeze(0)]
    gen = torch.Generator().manual_seed(settings.seed)
    starts = torch.randint(0, ids.numel() - settings.seq_len, (settings.n_samples,), generator=gen)
    return [ids[s : s + settings.seq_len].unsqueeze(0) for s in starts.tolist()]
