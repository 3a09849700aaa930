"""Reading a request body within a size limit, for the webhook receiver and the API alike."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from app.errors import BadRequest, PayloadTooLarge


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing it (413) as soon as it is larger than ``limit``.

    Content-Length is checked first when given, and the count is enforced while reading, so a
    missing or lying Content-Length (or a chunked body) cannot make the process buffer more.
    """
    declared = request.headers.get("content-length")
    # isascii() too: str.isdigit() accepts digits int() refuses ("²", decoded from latin-1).
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before sending the whole body") from None
    return b"".join(chunks)
