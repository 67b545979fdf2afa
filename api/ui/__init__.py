"""The web interface: server-rendered pages (api/ui/templates) with a little JavaScript of our
own (api/ui/static), served by the API's aiohttp application under /ui.

It is built on the API's rules, not beside them: a browser session is a token of the API's
token table (api/ui/session.py), pages take their data from the API's handlers and scripts
call the API's routes mounted under /ui/api/v1 (api/ui/bridge.py). So the same permissions,
the same scopes applied in SQL and the same audit events hold for a click as for a curl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aiohttp import web

from api.ui.bridge import mount_api
from api.ui.oidc import OidcSettings, add_oidc
from api.ui.pages import UI_KEY, UiSettings, add_pages
from api.ui.session import security_headers, web_sessions

__all__ = ["OidcSettings", "UiSettings", "setup_ui"]

STATIC = Path(__file__).parent / "static"


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/")


def setup_ui(app: web.Application, settings: UiSettings | None = None,
             oidc: OidcSettings | None = None) -> None:
    """Add the web interface to an app that already has every API route (setup_identity,
    setup_recordings and the rest): the pages, the static files, the API mounted under
    /ui/api/v1 for the pages' scripts, and single sign-on when `oidc` is given."""
    settings = settings or UiSettings()
    if oidc is not None:
        add_oidc(app, oidc)
        settings = dataclasses.replace(settings, oidc_name=oidc.display_name)
    if any(r.resource is not None and r.resource.canonical == "/api/v1/keys"
           for r in app.router.routes()):
        settings = dataclasses.replace(settings, keys_api=True)
    app[UI_KEY] = settings
    mount_api(app)
    add_pages(app)
    app.router.add_static("/ui/static/", STATIC, append_version=False)
    app.router.add_get("/", _home)
    app.middlewares.append(web_sessions)
    app.on_response_prepare.append(security_headers)
