"""The HTTP ceiling: a bare Starlette app served by uvicorn with the service's own options.

What the service does beyond this (middleware, auth, logging, the database) is what the
ratios in the benchmark measure.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.cli.serve import uvicorn_options
from app.settings import Settings


async def read(request: Request) -> JSONResponse:
    return JSONResponse({"data": [], "next_cursor": None})


async def write(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"status": "ok", "size": len(body)})


app = Starlette(
    routes=[
        Route("/", read, methods=["GET"]),
        Route("/", write, methods=["POST"]),
        Route("/healthz", read, methods=["GET"]),
    ]
)


def server_arguments(description: str) -> argparse.ArgumentParser:
    """The options both bench servers take (``bench.reference`` adds ``--database-url``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    return parser


def serve(app: str, args: argparse.Namespace) -> None:
    """uvicorn with the service's own options besides the bind address."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    uvicorn.run(
        app, host=args.host, port=args.port, workers=args.workers, **uvicorn_options(settings)
    )


def main() -> None:
    serve("bench.bare:app", server_arguments(__doc__ or "").parse_args())


if __name__ == "__main__":
    main()
