"""``vlm serve``: a fine-tuned model as an HTTP service with a web page (FastAPI + uvicorn).

``create_app(checkpoint, settings=...)`` builds the app (:mod:`downstream.serve.app`); :func:`serve` runs it with
uvicorn, as the command line does.
"""

from downstream.serve.app import create_app
from downstream.serve.server import serve
from downstream.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
