"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from exporter.auth import TokenService
from exporter.config import Settings
from exporter.passwords import Passwords
from exporter.resources import Resources

SETTINGS = web.AppKey("settings", Settings)
RESOURCES = web.AppKey("resources", Resources)
TOKENS = web.AppKey("tokens", TokenService)
PASSWORDS = web.AppKey("passwords", Passwords)
