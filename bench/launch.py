"""``python -m bench.launch trivial serve [options]``: the product's ``serve`` command, serving a
bare FastAPI app with one trivial route instead of the product's app.

It is the baseline of the HTTP parts: the same process start-up, the same uvicorn configuration
(loop, HTTP implementation, logging, lifespan) as ``stockledger serve``, and an endpoint that does
nothing. Bench code only; the product is not changed.
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI

from bench.servers import TRIVIAL_PATH


def trivial_app(*_: Any, **__: Any) -> FastAPI:
    app = FastAPI(title="trivial")

    @app.get(TRIVIAL_PATH)
    async def trivial() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    kind, args = sys.argv[1], sys.argv[2:]
    if kind != "trivial":
        raise SystemExit(f"unknown server kind {kind!r}")
    import api.app

    # ``serve`` imports create_app from api.app when it runs: it gets this one.
    api.app.create_app = trivial_app
    from api.cli import app as cli

    cli(args, prog_name="stockledger")


if __name__ == "__main__":
    main()
