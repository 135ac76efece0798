"""The config base shared by the integer weight quantizers (rtn, gptq, awq)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.quant.rtn import QuantSpec
from core.registry import ConfigError, MethodConfig


@dataclass(frozen=True)
class GroupedQuantConfig(MethodConfig):
    """Subclasses declare ``bits``, ``symmetric`` and ``group_size`` (None: one scale per
    output row); the group size is checked and the :class:`QuantSpec` built here, once.
    A subclass adds its own spec fields with :meth:`spec_options`."""

    def validate(self) -> None:  # subclasses declare group_size with power_of_two=True
        size = self.group_size  # type: ignore[attr-defined]
        if size is not None and (size < 1 or size & (size - 1)):
            raise ConfigError(f"group_size={size} is not a power of two: a power of two")

    def spec_options(self) -> dict[str, Any]:
        """QuantSpec fields this config sets besides bits, symmetry and group size."""
        return {}

    def spec(self) -> QuantSpec:
        size = self.group_size  # type: ignore[attr-defined]
        base: dict[str, Any] = {
            "bits": self.bits,  # type: ignore[attr-defined]
            "symmetric": self.symmetric,  # type: ignore[attr-defined]
            "granularity": "channel" if size is None else "group",
            "group_size": size or 128,
        }
        return QuantSpec(**{**base, **self.spec_options()})
