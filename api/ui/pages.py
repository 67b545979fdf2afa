"""The pages of the web interface, rendered on the server (Jinja2, autoescaped). Each page takes
its data from the API's own handlers (api.ui.bridge.call_api), so it shows exactly what the
API would show this user and writes the audit events the API writes."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import jinja2
from aiohttp import web

from api import auth_api, lifecycle_api, recordings_api
from api.app import DB_KEY, ApiInputError
from api.security import PRINCIPAL
from api.ui.bridge import ApiAnswer, call_api, with_query
from api.ui.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_TOKEN,
    clear_session_cookie,
    csrf_token,
    login_csrf,
    login_csrf_ok,
    new_login_csrf,
    session_cookie,
)
from api.ui.timeline import participant_timeline
from api.ui.words import in_words
from siprec_server.access import AccessError, Permission, Principal, Role
from siprec_server.logs import get_logger
from storage.annotations import KINDS
from storage.metadata_log import read_metadata_log
from storage.search import STATES

__all__ = ["UI_KEY", "UiSettings", "add_pages"]

log = get_logger("api.ui")

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class UiSettings:
    idle_timeout_s: int = 900
    keys_api: bool = False
    """The key-custody endpoints exist on this server (the keys page is shown)."""
    oidc_name: str | None = None
    """The SSO button's text when an OpenID Connect issuer is configured."""


UI_KEY = web.AppKey("ui_settings", UiSettings)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    return env


def _when(value: str | None) -> str:
    """An RFC 3339 time as the page shows it before scripts localise it."""
    if not value:
        return "—"
    return value.replace("T", " ").replace("Z", " UTC")[:23]


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    whole = int(value)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}" if whole >= 3600 \
        else f"{whole // 60}:{whole % 60:02d}"


@dataclass(frozen=True, slots=True)
class NavItem:
    href: str
    label: str


def _nav(principal: Principal | None, settings: UiSettings) -> list[NavItem]:
    if principal is None:
        return []
    items = []
    if principal.can(Permission.SEARCH):
        items.append(NavItem("/ui/recordings", "Recordings"))
    if principal.can(Permission.AUDIT_READ):
        items.append(NavItem("/ui/audit", "Audit trail"))
    if principal.can(Permission.USERS_MANAGE):
        items.append(NavItem("/ui/users", "Users"))
    if any(principal.can(p) for p in (Permission.RETENTION_MANAGE, Permission.HOLDS_MANAGE,
                                      Permission.SUBJECTS_MANAGE)):
        items.append(NavItem("/ui/compliance", "Retention & holds"))
    if settings.keys_api and principal.can(Permission.KEYS_MANAGE):
        items.append(NavItem("/ui/keys", "Keys"))
    return items


def render(request: web.Request, template: str, *, status: int = 200,
           **context: Any) -> web.Response:
    settings = request.app.get(UI_KEY) or UiSettings()
    principal = request.get(PRINCIPAL)
    token = request.get(SESSION_TOKEN)
    page = _environment().get_template(template).render(
        principal=principal,
        csrf=csrf_token(token) if token else "",
        csrf_field=CSRF_FIELD,
        nav=_nav(principal, settings),
        path=request.path,
        idle_timeout_s=settings.idle_timeout_s,
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, answer: ApiAnswer, title: str) -> web.Response:
    return render(request, "error.html", status=answer.status, title=title,
                  words=in_words(answer.code, answer.status, answer.message))


def _principal(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise web.HTTPSeeOther("/ui/login")
    return principal


# ------------------------------------------------------------------------------ log-in


_LOGIN_WORDS = {
    401: "Wrong user name or password.",
    429: "Too many failed log-ins from this computer. Wait a few minutes and try again.",
    503: "The server is busy. Try again in a moment.",
    400: "Enter your user name and password.",
}


def _login_form(request: web.Request, *, status: int = 200, problem: str | None = None,
                notice: str | None = None, username: str = "") -> web.Response:
    value = new_login_csrf()
    response = render(request, "login.html", status=status, problem=problem, notice=notice,
                      username=username, login_csrf=value, title="Log in",
                      oidc_name=(request.app.get(UI_KEY) or UiSettings()).oidc_name)
    login_csrf(request, response, value)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    notice = None
    if request.query.get("expired"):
        notice = ("Your session ended: there was no activity for a while, or it was ended. "
                  "Please log in again.")
    elif request.query.get("bye"):
        notice = "You are logged out."
    elif request.query.get("sso_failed"):
        notice = "Single sign-on did not work. Log in with your password, or try again."
    return _login_form(request, notice=notice)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    field = form.get(CSRF_FIELD)
    username = form.get("username")
    password = form.get("password")
    if not login_csrf_ok(request, field if isinstance(field, str) else None):
        return _login_form(request, status=403,
                           problem="The log-in form had expired. Please try again.")
    if not isinstance(username, str) or not isinstance(password, str):
        return _login_form(request, status=400, problem=_LOGIN_WORDS[400])
    try:
        user, rehashed = await auth_api.verify_login(request, username.strip(), password)
    except ApiInputError as exc:
        return _login_form(request, status=exc.status, username=username[:64],
                           problem=_LOGIN_WORDS.get(exc.status, in_words(exc.code, exc.status)))
    token, _ = await auth_api.issue_login(request, user, rehashed=rehashed, kind="web")
    try:
        principal = Principal.of(user.id, user.username, user.role, user.scopes, user.grants)
        home = _home(principal, request.app.get(UI_KEY) or UiSettings())
    except AccessError:
        home = "/ui/recordings"
    response = _see_other(home)
    session_cookie(response, request, token)
    response.del_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def logout(request: web.Request) -> web.StreamResponse:
    _principal(request)
    await auth_api.logout(request)  # revokes this session's token and audits it
    response = _see_other("/ui/login?bye=1")
    clear_session_cookie(response, request)
    return response


def _home(principal: Principal, settings: UiSettings) -> str:
    """The first page this user may use (a custodian's is the keys page)."""
    items = _nav(principal, settings)
    return items[0].href if items else "/ui/recordings"


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(_home(_principal(request), request.app.get(UI_KEY) or UiSettings()))


# ------------------------------------------------------------------------------ search


_SEARCH_FIELDS = ("q", "name", "call_id", "session_id", "tag", "state", "from", "to", "tz",
                  "limit", "cursor")


def _utc(text: str, offset_minutes: str) -> str:
    """A datetime-local value of the browser (its UTC offset in minutes east) as RFC 3339 UTC;
    values that are already RFC 3339 or unreadable pass through for the API to judge."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        return text
    try:
        offset = int(offset_minutes or "0")
    except ValueError:
        offset = 0
    if not -900 <= offset <= 900:
        offset = 0
    return (moment - timedelta(minutes=offset)).replace(tzinfo=UTC).isoformat().replace(
        "+00:00", "Z")


def _search_params(form: Mapping[str, str]) -> dict[str, str]:
    tz = form.get("tz", "")
    return {
        "participant": form.get("q", "").strip(),
        "name": form.get("name", "").strip(),
        "call_id": form.get("call_id", "").strip(),
        "session_id": form.get("session_id", "").strip(),
        "tag": form.get("tag", "").strip(),
        "state": form.get("state", ""),
        "from": _utc(form.get("from", "").strip(), tz),
        "to": _utc(form.get("to", "").strip(), tz),
        "limit": form.get("limit", ""),
        "cursor": form.get("cursor", ""),
    }


async def search_page(request: web.Request) -> web.StreamResponse:
    principal = _principal(request)
    form = {name: request.query.get(name, "") for name in _SEARCH_FIELDS}
    params = _search_params(form)
    answer = await call_api(recordings_api.list_recordings, with_query(request, params))
    export = {k: v for k, v in params.items() if v and k not in ("cursor", "limit")}
    export["format"] = "csv"
    next_href = None
    if answer.ok and answer.body.get("next_cursor"):
        next_href = "/ui/recordings?" + urlencode(
            {k: v for k, v in form.items() if v and k != "cursor"}
            | {"cursor": answer.body["next_cursor"]})
    first_href = ("/ui/recordings?" + urlencode(
        {k: v for k, v in form.items() if v and k != "cursor"})) if form["cursor"] else None
    return render(
        request, "search.html", title="Recordings", form=form, states=STATES,
        answer=answer, problem=None if answer.ok else in_words(answer.code, answer.status,
                                                               answer.message),
        items=answer.body.get("items", []) if answer.ok else [],
        next_href=next_href, first_href=first_href,
        export_href="/ui/api/v1/recordings?" + urlencode(export)
        if principal.can(Permission.EXPORT) else None,
    )


# ------------------------------------------------------------------------------ a recording


def _party_names(view: Mapping[str, Any]) -> dict[str, str]:
    names = {}
    for p in view.get("participants", []):
        label = p.get("name") or p.get("aor") or p.get("id")
        if p.get("name") and p.get("number"):
            label = f"{p['name']} ({p['number']})"
        names[p["id"]] = label
    return names


def _lanes(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = _party_names(view)
    lanes = []
    for channel in view.get("channels", []):
        who = [names.get(pid, pid) for pid in channel.get("participant_ids", [])]
        lanes.append({
            "index": channel.get("index"),
            "label": channel.get("label"),
            "names": who,
            "title": ", ".join(who) if who else f"Stream {channel.get('label') or '?'}",
        })
    return lanes


def _streams(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in view.get("streams", []):
        received, lost = s.get("packets_received"), s.get("packets_lost")
        complete = None
        if isinstance(received, int) and isinstance(lost, int) and received + lost > 0:
            complete = round(100.0 * received / (received + lost), 1)
        rows.append({**s, "complete": complete})
    return rows


async def recording_page(request: web.Request) -> web.StreamResponse:
    principal = _principal(request)
    verify = request.query.get("verify") == "true"
    answer = await call_api(recordings_api.show_recording,
                            with_query(request, {"verify": "true"} if verify else {}))
    if not answer.ok:
        return error_page(request, answer, "Recording not available")
    view = answer.body
    rid = UUID(view["id"])
    notes = await call_api(lifecycle_api.list_annotations, with_query(request, {}))
    annotations = notes.body.get("items", []) if notes.ok else []
    timeline, unreadable = participant_timeline(
        await read_metadata_log(request.app[DB_KEY], rid), view.get("channels", []))
    erased = view["state"] == "erased"
    lanes = _lanes(view)
    player = {
        "id": str(rid),
        "duration_s": view.get("duration_s"),
        "pauses": view.get("pauses", []),
        "channels": lanes,
        "audio": f"/ui/api/v1/recordings/{rid}/audio",
        "peaks": f"/ui/api/v1/recordings/{rid}/peaks",
    }
    can_play = principal.can(Permission.PLAY) and view.get("has_audio") and not erased
    return render(
        request, "recording.html", title="Recording", view=view, lanes=lanes, player=player,
        streams=_streams(view), timeline=timeline, unreadable_metadata=unreadable,
        annotations=annotations, kinds=KINDS, erased=erased, can_play=can_play,
        can_annotate=principal.can(Permission.ANNOTATE) and not erased,
        can_delete=principal.can(Permission.DELETE) and not erased,
        live=view["state"] in ("offered", "recording"),
        names=_party_names(view),
    )


# ------------------------------------------------------------------------------ audit


_AUDIT_FIELDS = ("actor", "action", "target", "outcome", "from", "to", "tz", "cursor", "order")


async def audit_page(request: web.Request) -> web.StreamResponse:
    form = {name: request.query.get(name, "") for name in _AUDIT_FIELDS}
    params = {
        "actor": form["actor"].strip(), "action": form["action"].strip(),
        "target": form["target"].strip(), "outcome": form["outcome"],
        "from": _utc(form["from"].strip(), form["tz"]), "to": _utc(form["to"].strip(),
                                                                    form["tz"]),
        "cursor": form["cursor"], "order": form["order"], "limit": "100",
    }
    answer = await call_api(auth_api.list_audit, with_query(request, params))
    if answer.status == 403:
        return error_page(request, answer, "Audit trail")
    next_href = None
    if answer.ok and answer.body.get("next_cursor"):
        next_href = "/ui/audit?" + urlencode(
            {k: v for k, v in form.items() if v and k != "cursor"}
            | {"cursor": answer.body["next_cursor"]})
    return render(request, "audit.html", title="Audit trail", form=form,
                  items=answer.body.get("items", []) if answer.ok else [],
                  problem=None if answer.ok else in_words(answer.code, answer.status,
                                                          answer.message),
                  next_href=next_href)


# ------------------------------------------------------------------------------ users


async def users_page(request: web.Request) -> web.StreamResponse:
    answer = await call_api(auth_api.list_users, with_query(request, {}))
    if not answer.ok:
        return error_page(request, answer, "Users")
    return render(request, "users.html", title="Users", items=answer.body.get("items", []),
                  roles=[role.value for role in Role])


# ------------------------------------------------------------------------------ compliance


async def compliance_page(request: web.Request) -> web.StreamResponse:
    principal = _principal(request)
    plain = with_query(request, {})
    sections: dict[str, ApiAnswer | None] = {"policies": None, "holds": None, "subjects": None}
    if principal.can(Permission.RETENTION_MANAGE):
        sections["policies"] = await call_api(lifecycle_api.list_policies, plain)
    if principal.can(Permission.HOLDS_MANAGE):
        sections["holds"] = await call_api(lifecycle_api.list_holds, plain)
    if principal.can(Permission.SUBJECTS_MANAGE) and principal.unrestricted:
        sections["subjects"] = await call_api(lifecycle_api.list_subject_requests, plain)
    if all(s is None for s in sections.values()):
        return error_page(request, ApiAnswer(403, {"error": {"code": "forbidden"}}),
                          "Retention & holds")
    return render(request, "compliance.html", title="Retention, holds and subject requests",
                  sections=sections, in_words=in_words)


# ------------------------------------------------------------------------------ keys


async def keys_page(request: web.Request) -> web.StreamResponse:
    principal = _principal(request)
    if not principal.can(Permission.KEYS_MANAGE):
        if request.query.get("sealed"):
            return render(request, "error.html", status=503, title="The server is sealed",
                          words="The server is sealed: its key custodians must unseal it "
                                "before recordings can be searched or played. Try again later.")
        return error_page(request, ApiAnswer(403, {"error": {"code": "forbidden"}}), "Keys")
    return render(request, "keys.html", title="Key custody",
                  sealed=bool(request.query.get("sealed")))


def add_pages(app: web.Application) -> None:
    router = app.router
    router.add_get("/ui/login", login_page)
    router.add_post("/ui/login", login_submit)
    router.add_post("/ui/logout", logout)
    router.add_get("/ui", index)
    router.add_get("/ui/", index)
    router.add_get("/ui/recordings", search_page)
    router.add_get("/ui/recordings/{id}", recording_page)
    router.add_get("/ui/audit", audit_page)
    router.add_get("/ui/users", users_page)
    router.add_get("/ui/compliance", compliance_page)
    router.add_get("/ui/keys", keys_page)
