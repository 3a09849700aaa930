"""What the inbox keeps of a delivery, and what became of it."""

from __future__ import annotations

from enum import StrEnum


class DeliveryOutcome(StrEnum):
    APPLIED = "applied"  # changed (or confirmed) a connection's state
    RECORDED = "recorded"  # stored; nothing to apply (sync facts, forwards, unknown types)
    FAILED = "failed"  # processing raised; `nango-registry replay` re-applies it
