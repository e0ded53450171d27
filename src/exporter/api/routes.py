"""The route table, in one place."""

from __future__ import annotations

from aiohttp import web

from exporter.api import (
    downloads,
    exports,
    health,
    metrics,
    pages,
    schedule_links,
    schedules,
    tokens,
)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz, name="healthz", allow_head=False)
    app.router.add_get("/readyz", health.readyz, name="readyz", allow_head=False)
    app.router.add_get("/metrics", metrics.serve_metrics, name="metrics", allow_head=False)
    app.router.add_get("/.well-known/jwks.json", tokens.jwks, name="jwks", allow_head=False)
    app.router.add_post("/v1/auth/token", tokens.issue_token, name="issue_token")
    app.router.add_post("/v1/auth/refresh", tokens.refresh_token, name="refresh_token")
    app.router.add_post("/v1/auth/logout", tokens.logout, name="logout")
    app.router.add_post("/v1/exports", exports.create_export, name="create_export")
    app.router.add_get("/v1/exports", exports.list_exports, name="list_exports", allow_head=False)
    app.router.add_get(
        "/v1/exports/{export_id}", exports.get_export, name="get_export", allow_head=False
    )
    app.router.add_delete("/v1/exports/{export_id}", exports.cancel_export, name="cancel_export")
    app.router.add_get(
        "/v1/exports/{export_id}/download",
        exports.download_export,
        name="download_export",
        allow_head=False,
    )
    app.router.add_post(
        "/v1/exports/{export_id}/download-link",
        downloads.create_download_link,
        name="create_download_link",
    )
    app.router.add_get(
        "/v1/downloads/{token}", downloads.open_download, name="open_download", allow_head=False
    )
    app.router.add_post("/v1/export-schedules", schedules.create_schedule, name="create_schedule")
    app.router.add_get(
        "/v1/export-schedules", schedules.list_schedules, name="list_schedules", allow_head=False
    )
    app.router.add_get(
        "/v1/export-schedules/{schedule_id}",
        schedules.get_schedule,
        name="get_schedule",
        allow_head=False,
    )
    app.router.add_patch(
        "/v1/export-schedules/{schedule_id}", schedules.update_schedule, name="update_schedule"
    )
    app.router.add_delete(
        "/v1/export-schedules/{schedule_id}", schedules.delete_schedule, name="delete_schedule"
    )
    app.router.add_get(
        schedule_links.PAUSE_PREFIX + "{token}",
        schedule_links.confirm_pause,
        name="confirm_schedule_pause",
        allow_head=False,
    )
    app.router.add_post(
        schedule_links.PAUSE_PREFIX + "{token}",
        schedule_links.pause_by_link,
        name=schedule_links.PAUSE_ROUTE,
    )
    app.router.add_get(pages.HOME_PATH, pages.home, name="home", allow_head=False)
    app.router.add_get(pages.ASSETS_PREFIX + "{name}", pages.asset, name="asset", allow_head=False)
