"""``GET /metrics``: the Prometheus exposition of the gateway's metrics (serving/metrics.py).

404 in the error shape when IQA_METRICS_ENABLED is false. A ``def`` endpoint (threadpool): in
multiprocess mode the exposition reads every worker's files.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving import metrics
from serving.errors import error_response

__all__ = ["router"]

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={404: {"description": "metrics are disabled"}})
def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    body = metrics.exposition(request.headers.get("accept"))
    if body is None:
        return error_response(404, "not_found", "metrics are disabled (IQA_METRICS_ENABLED=false)")
    data, content_type = body
    return Response(content=data, media_type=content_type)
