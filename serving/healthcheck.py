"""``python -m serving.healthcheck [PATH]``: exit 0 when the local gateway answers ``PATH`` with 200.

The container's HEALTHCHECK (the slim image has no curl): it asks ``http://127.0.0.1:$IQA_PORT`` for
``PATH`` (default ``/healthz``, liveness; ``/readyz`` for readiness) with a short timeout and exits 1,
with one line on stderr, on any other status, a refused connection or a timeout.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

__all__ = ["check", "main"]

DEFAULT_PATH = "/healthz"
TIMEOUT_S = 3.0


def check(port: int, path: str = DEFAULT_PATH, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``GET http://127.0.0.1:<port><path>`` answers 200, else why not."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else DEFAULT_PATH
    if not path.startswith("/"):
        print(f"healthcheck: PATH must start with '/', got {path!r}", file=sys.stderr)
        return 2
    # IQA_PORT as the gateway reads it (serving/settings.py), without importing the gateway's settings
    port = int(os.environ.get("IQA_PORT", "8080"))
    problem = check(port, path)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
