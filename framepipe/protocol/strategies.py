"""The buffer filling and consumption strategies, without pydantic: the data plane (the frame ring's producer)
imports them from here, the wire's payloads (:mod:`framepipe.protocol.payloads`) re-export them."""

from __future__ import annotations

from enum import StrEnum

from framepipe.protocol.errors import InvalidPayloadError

__all__ = ["BufferConsumptionStrategy", "BufferFillingStrategy"]


class BufferFillingStrategy(StrEnum):
    """What a source does when a consumer's buffer is full (the reference's names).

    The one strategy type of framepipe: the wire, the sources and the frame ring's producer
    all use it. ``base`` is what the data plane applies (``ADAPTIVE_*`` act as their base
    strategy there; the sources layer decides when an adaptive consumer starts dropping).
    """

    WAIT = "WAIT"
    DROP_OLDEST = "DROP_OLDEST"
    ADAPTIVE_DROP_OLDEST = "ADAPTIVE_DROP_OLDEST"
    DROP_LATEST = "DROP_LATEST"
    ADAPTIVE_DROP_LATEST = "ADAPTIVE_DROP_LATEST"

    @classmethod
    def parse(cls, value: str | BufferFillingStrategy) -> BufferFillingStrategy:
        """A strategy from its name (any case); InvalidPayloadError naming the choices."""
        try:
            return cls(value.upper() if isinstance(value, str) else value)
        except ValueError:
            raise InvalidPayloadError(
                f"unknown buffer filling strategy {value!r}; "
                f"expected one of {', '.join(m.value for m in cls)}"
            ) from None

    @property
    def base(self) -> BufferFillingStrategy:
        if self is BufferFillingStrategy.ADAPTIVE_DROP_OLDEST:
            return BufferFillingStrategy.DROP_OLDEST
        if self is BufferFillingStrategy.ADAPTIVE_DROP_LATEST:
            return BufferFillingStrategy.DROP_LATEST
        return self

    @property
    def waits(self) -> bool:
        """Every frame reaches the consumer (the producer waits for room)."""
        return self is BufferFillingStrategy.WAIT


class BufferConsumptionStrategy(StrEnum):
    """How the pipeline takes frames from a source buffer (the reference's names)."""

    LAZY = "LAZY"
    EAGER = "EAGER"
