"""Structured logging: JSON lines off a terminal, readable lines on one; context via contextvars."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

from exporter.config import Settings
from exporter.redact import redact_secrets


def renders_json(settings: Settings, stream: IO[str]) -> bool:
    """JSON lines for machines (pipes, files, log collectors); readable lines for a person at
    a terminal. ``log_json`` (``EXPORTER_LOG_JSON``), when set, decides instead."""
    return settings.log_json if settings.log_json is not None else not stream.isatty()


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library (aiohttp, arq, botocore) through one renderer."""
    as_json = renders_json(settings, sys.stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        # Plain tracebacks: rich's would print local variables, passwords and tokens included.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Access logs are replaced by our own one-line-per-request log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _identity(logger: Any, name: str, event: Any) -> Any:
    return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
