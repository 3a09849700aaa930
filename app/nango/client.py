"""The Nango API client. Filled in by the Connect-session and reconciliation work (issue 5)."""

from __future__ import annotations


class NangoClient:
    """Placeholder type so ``AppState`` can name the client; see issue 5."""
