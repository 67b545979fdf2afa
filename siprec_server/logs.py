"""Structured logging: JSON lines in production, readable lines on a terminal.

Log ids (recording id, Call-ID, dialog id), never phone numbers, names or AORs in clear. Where
an operator needs to correlate a party across log lines, `pseudonym()` gives a keyed hash that
cannot be reversed without the process's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sys
from typing import Any

import structlog

_PSEUDONYM_KEY = secrets.token_bytes(32)


def pseudonym(value: str) -> str:
    """A stable (for this process) non-reversible stand-in for personal data in logs."""
    digest = hmac.new(_PSEUDONYM_KEY, value.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return "pd:" + digest.hexdigest()[:12]


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # The standard library's loggers (the embedded PostgreSQL manager, asyncio, aiohttp) go
    # through the same renderer, so every line has one format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # aiohttp's protocol layer logs malformed requests with their raw bytes (tokens, searched
    # numbers); handler failures are caught and logged without values by api.app.json_errors.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
