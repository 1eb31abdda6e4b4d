"""``python -m serving``: run the gateway under uvicorn on ``IQA_HOST``:``IQA_PORT``."""

from __future__ import annotations

import uvicorn

from serving.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "serving.app:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # in-flight requests' grace on SIGTERM
    )


if __name__ == "__main__":
    main()
