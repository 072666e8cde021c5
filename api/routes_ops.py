"""Probes and metrics, without authentication: ``/healthz``, ``/readyz``, ``/metrics``."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.models import Health, Ready

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}},
            summary="Readiness: the registry opens and every active version has a valid bundle")
def readyz(request: Request):
    """Maps load lazily on first use; ready means each active version *can* be loaded
    (its bundle is on disk with a valid manifest), not that it is resident."""
    service = request.app.state.vloc
    try:
        service.registry.ping()
        maps, active, problems = service.readiness()
    except Exception as e:  # the registry cannot be read: not ready, and say why
        return JSONResponse(Ready(ready=False, maps=0, active=0, resident=0,
                                  problems=[f"registry: {e}"]).model_dump(), 503)
    ready = Ready(ready=not problems, maps=maps, active=active, resident=len(service.cache.resident()),
                  problems=problems)
    return ready if ready.ready else JSONResponse(ready.model_dump(), 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    body, ctype = request.app.state.vloc.metrics.render()
    return Response(body, media_type=ctype)
