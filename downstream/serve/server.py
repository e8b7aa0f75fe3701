"""Run the service with uvicorn: what ``vlm serve`` calls."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from downstream.serve.settings import ServeSettings

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info") -> int:
    """Serve ``checkpoint`` on ``host:port`` until SIGINT/SIGTERM; returns the exit code (1 when the model could not
    be loaded).

    Shutdown is graceful: uvicorn stops taking connections, lets the requests in flight finish (at most
    ``settings.shutdown_timeout_s``), then the worker answers what is still queued.

    Raises:
        DataError: The folder is not a fine-tuned model folder.
    """
    import uvicorn

    from downstream.serve.app import create_app

    settings = settings or ServeSettings()
    app = create_app(checkpoint, settings=settings)
    if not is_loopback(host):
        logger.warning("vlm serve listens on %s: the service has no authentication and anyone who can reach this "
                       "address can use it; put it behind a proxy that authenticates, or bind 127.0.0.1", host)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
                            server_header=False)
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def stop(exc: BaseException) -> None:  # a model that cannot load leaves nothing to serve
        failed.append(exc)
        server.should_exit = True

    app.state.on_load_error = stop
    logger.info("loading %s; the page will be at http://%s:%d/ and the API docs at /docs", checkpoint,
                host if ":" not in host else f"[{host}]", port)
    server.run()
    return 1 if failed else 0
