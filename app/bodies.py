"""Reading a request body within a size limit, for the webhook receiver and the API alike."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from app.errors import BadRequest, PayloadTooLarge, RequestTimeout

# The connection is closed after these answers: the rest of the body is never read.
_CLOSE = {"Connection": "close"}


async def read_limited(request: Request, limit: int, *, seconds: float) -> bytes:
    """Read the body, refusing it (413) as soon as it is larger than ``limit``, and cutting it
    off (408) if the whole of it has not arrived within ``seconds``.

    Content-Length is checked first when given, and the count is enforced while reading, so a
    missing or lying Content-Length (or a chunked body) cannot make the process buffer more;
    the time limit is for the whole body, so a client sending a byte a second holds nothing for
    longer than that.
    """
    declared = request.headers.get("content-length")
    # isascii() too: str.isdigit() accepts digits int() refuses ("²", decoded from latin-1).
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", headers=dict(_CLOSE))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body is larger than {limit} bytes", headers=dict(_CLOSE)
                    )
                chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before sending the whole body") from None
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {seconds:g} seconds", headers=dict(_CLOSE)
        ) from None
    return b"".join(chunks)
