"""The status page and its API (FastAPI), served by `scanside run`.

    /                 the page (static HTML + JS; the JS builds the page with textContent
                      only, so a DICOM value is never markup)
    /api/status       the board's snapshot (documented in /openapi.json)
    /api/events       the same, live (Server-Sent Events), each time it changes
    /api/series/{uid}/images/{name}.png   lesion overlays of a positive series
    /metrics          Prometheus
    /healthz /readyz  probes: the only routes without the token

When a token is configured every other route needs it, as a Bearer token or as the
password of HTTP Basic (so a browser asks for it). Responses carry a strict
Content-Security-Policy and the usual hardening headers. Nothing here changes state, so
there is nothing for a cross-site request to forge.
"""

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials as Bearer
from fastapi.security import HTTPBasic, HTTPBasicCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from sse_starlette.sse import EventSourceResponse

from edge import __version__
from edge.web.board import StatusBoard

STATIC = Path(__file__).with_name("static")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin",
           "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
           "Cache-Control": "no-store"}
UID = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(Open):
    state: str
    detail: str
    models: dict
    broker: dict
    inbox: str
    state_dir: str
    last_error: str | None


class Snapshot(BaseModel):
    appliance_id: str
    version: str
    revision: int
    started_at: float
    health: Health
    arriving: list[Open]
    results: list[Open]
    alerts: list[Open]
    last_series_timings_ms: dict[str, float]
    quarantine: list[Open]


class Probe(BaseModel):
    status: str
    reason: str | None = None


def create_app(board: StatusBoard, token: str | None,
               ready: Callable[[], tuple[bool, str]]) -> FastAPI:
    """The web application over `board`; `token` None means no authentication (loopback
    only: the config refuses to expose the page without one)."""
    app = FastAPI(title="scanside status", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="What the appliance is doing: health, series arriving, results "
                              "and alerts, latency, quarantine.")

    @app.middleware("http")
    async def harden(request, call_next):
        response = await call_next(request)
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.get("/healthz", response_model=Probe, tags=["probes"])
    def healthz() -> Probe:
        """The process serves requests."""
        return Probe(status="alive")

    @app.get("/readyz", response_model=Probe, tags=["probes"],
             responses={503: {"model": Probe, "description": "Not ready"}})
    def readyz():
        """Models loaded and the pipeline running."""
        ok, reason = ready()
        if ok:
            return Probe(status="ready")
        return JSONResponse(Probe(status="not ready", reason=reason).model_dump(), 503)

    router = _protected(board)

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict:
        return app.openapi()

    app.include_router(router, dependencies=[Depends(_authorise(token))])
    return app


BEARER = HTTPBearer(auto_error=False, description="the appliance's web token")
BASIC = HTTPBasic(auto_error=False, realm="scanside",
                  description="any user name, the web token as password")


def _authorise(token: str | None):
    def authorise(bearer: Annotated[Bearer | None, Depends(BEARER)],
                  basic: Annotated[HTTPBasicCredentials | None, Depends(BASIC)]) -> None:
        if token is None:
            return
        offered = bearer.credentials if bearer else basic.password if basic else ""
        if not secrets.compare_digest(offered.encode(), token.encode()):
            raise HTTPException(401, "the web token is needed",
                                headers={"WWW-Authenticate": 'Basic realm="scanside"'})

    return authorise


def _protected(board: StatusBoard) -> APIRouter:
    router = APIRouter(responses={401: {"description": "Missing or wrong token"}})

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @router.get("/api/status", response_model=Snapshot, tags=["status"])
    def status() -> dict:
        """Health, the series arriving now, recent results and alerts (newest first),
        per-stage latency of the last series, quarantined files."""
        return board.snapshot()

    @router.get("/api/events", tags=["status"],
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "`snapshot` events, one per change"}})
    async def events() -> EventSourceResponse:
        """The status snapshot again each time it changes (Server-Sent Events)."""
        async def stream():
            revision = -1
            while True:
                current = await anyio.to_thread.run_sync(board.wait_for_change, revision, 15.0,
                                                         abandon_on_cancel=True)
                if current != revision:
                    revision = current
                    yield {"event": "snapshot", "data": json.dumps(board.snapshot())}
        return EventSourceResponse(stream(), ping=15)

    @router.get("/api/series/{series_uid}/images/{name}.png", tags=["status"],
                response_class=Response,
                responses={200: {"content": {"image/png": {}}}, 404: {"description": "none"}})
    def image(series_uid: Annotated[str, PathParam(max_length=64, pattern=UID)],
              name: Annotated[str, PathParam(pattern=r"^(key|slice-[0-9]{1,5})$")]) -> Response:
        """A lesion overlay of a positive series: `key` (the largest lesion's slice) or
        `slice-N` (each slice with a lesion, 0-based in anatomical order)."""
        png = board.image(series_uid, name)
        if png is None:
            raise HTTPException(404, "no such image")
        return Response(png, media_type="image/png")

    @router.get("/metrics", tags=["status"], response_class=Response,
                responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Counters, per-stage latency histograms, queue depths (Prometheus text format)."""
        return Response(generate_latest(board.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
