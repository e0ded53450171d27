"""aiohttp's access log, without credentials: the request line goes through the same
redaction as every other log line (download links carry their token in the path).

``create_app`` installs it through ``handler_args``, so it applies however the app is served
(``exporter api`` turns the access log off altogether; test servers and ``aiohttp.web``
runners leave it on).
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from exporter.redact import redact_text


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: peer, request line (redacted), status, size, seconds."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        line = redact_text(
            f"{request.method} {request.path_qs} HTTP/{request.version.major}."
            f"{request.version.minor}"
        )
        self.logger.info(
            '%s "%s" %s %s %.6f',
            request.remote or "-",
            line,
            response.status,
            response.body_length,
            time,
        )
