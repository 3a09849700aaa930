"""How a failed call to Nango becomes this API's error.

Nango's refusals become 502 ``nango_<Nango's code>`` (``nango_invalid_body``,
``nango_unknown_account``...), prefixed so a caller can tell Nango's codes from this service's,
with ``details.nango_status`` and ``details.nango_code``; Nango unreachable after retries is 502
``nango_unavailable``; ``NANGO_SECRET_KEY`` unset is 503 ``nango_not_configured``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import (
    NANGO_NOT_CONFIGURED,
    NANGO_REFUSED,
    NANGO_UNAVAILABLE,
    ServiceUnavailable,
    UpstreamError,
)
from app.nango.client import NangoError, NangoNotConfigured, NangoRejected


@contextmanager
def nango_errors() -> Iterator[None]:
    """Turn a failed call to Nango into this service's JSON error."""
    try:
        yield
    except NangoNotConfigured as error:
        raise ServiceUnavailable(error.message, code=NANGO_NOT_CONFIGURED) from None
    except NangoRejected as error:
        raise UpstreamError(
            error.message,
            code=NANGO_REFUSED.for_nango(error.code),
            details={"nango_status": error.status, "nango_code": error.code},
        ) from None
    except NangoError as error:
        raise UpstreamError(error.message, code=NANGO_UNAVAILABLE) from None
