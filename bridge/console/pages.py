"""The console's pages: sign-in, overview, messages, one message's trace, dead letters, audit trail.

Every page but sign-in needs a session (``bridge.console.session``); without one the browser is sent
to ``/console/login``. Operators see the overview, messages, traces and dead letters and may replay a
dead letter; auditors see the audit trail. A POST is acted on only with the session's CSRF token in
the form and, when the browser names an ``Origin``, only from the console's own origin. Every action
(sign-in, refused sign-in, sign-out, trace view, replay, audit search) is written to the audit trail
with ``bridge.audit.console_action``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from bridge import audit
from bridge.api import audit as audit_search
from bridge.api.deps import authenticator_of, client_address, clock_of, settings_of, store_of
from bridge.auth import Caller, NotAuthenticated, Throttled
from bridge.console import render
from bridge.console.render import esc, page, table, url, when
from bridge.console.session import Session, SessionCodec
from bridge.console.stats import overview
from bridge.errors import InvalidInput
from bridge.outbox.port import (
    AuditRecord,
    DeliveryRecord,
    InvalidTransition,
    MessageFilter,
    NotFound,
    OutboxStore,
)
from bridge.security import scopes

log = logging.getLogger("bridge.console")

router = APIRouter(prefix="/console", include_in_schema=False)

COOKIE = "bridge_console"
_FORM_LIMIT = 16 * 1024
_STATES = ("in-flight", "delivered", "dead")
_PAGE_SIZE = 100


def codec_of(request: Request) -> SessionCodec:
    """The app's session codec (made by ``bridge.console.install``)."""
    codec: SessionCodec = request.app.state.console_sessions
    return codec


def _still_allowed(request: Request, session: Session) -> bool:
    """The named operator/auditor is still in the configuration (removing one ends their sessions)."""
    settings = settings_of(request)
    kind, _, name = session.name.partition(":")
    people = settings.operators if kind == "operator" else settings.auditors if kind == "auditor" else []
    return any(p.name == name for p in people)


def current_session(request: Request) -> Session | None:
    """The valid session of the request's cookie, or None."""
    found = codec_of(request).read(request.cookies.get(COOKIE), clock_of(request).now())
    if found is None or not _still_allowed(request, found):
        return None
    return found


def _to_login() -> Response:
    return RedirectResponse("/console/login", status_code=303, headers=render.SECURITY_HEADERS)


def _forbidden(session: Session, what: str) -> Response:
    return page("Not allowed", f'<p class="error">{esc(what)}</p>', session, 403)


def _plain_loopback(request: Request) -> bool:
    """Plain http from and to loopback: the one case where the cookie goes without ``Secure``."""
    if request.url.scheme != "http":
        return False
    try:
        client = ipaddress.ip_address(client_address(request))
        host = ipaddress.ip_address(request.url.hostname or "")
    except ValueError:
        return request.url.hostname == "localhost" and client_address(request) in ("127.0.0.1", "::1")
    return client.is_loopback and host.is_loopback


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_LIMIT:
            return {}
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _same_origin(request: Request) -> bool:
    """A browser's ``Origin`` (when sent) must be the console's own; refuses cross-site form posts."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def _audit(request: Request, *records: AuditRecord) -> None:
    await anyio.to_thread.run_sync(store_of(request).append_audit_many, list(records))


def _action(request: Request, actor: str, action: str, **fields: Any) -> AuditRecord:
    return audit.console_action(recorded=clock_of(request).now(), actor=actor, action=action, **fields)


# -- sign-in and sign-out ------------------------------------------------------------------------------
def _login_page(message: str = "", status: int = 200) -> Response:
    note = f'<p class="error" id="login-error">{esc(message)}</p>' if message else ""
    body = (
        note + '<form method="post" action="/console/login" id="login">'
        '<label>Operator or auditor token <input type="password" name="token" id="token" '
        'autocomplete="current-password" required></label> '
        '<button type="submit" id="sign-in">Sign in</button></form>'
        "<p class=legend>Systems sign in nowhere here: their tokens are for the API.</p>"
    )
    return page("Sign in", body, None, status)


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    target = "/console/overview" if session.has("operator") else "/console/audit"
    return RedirectResponse(target, status_code=303, headers=render.SECURITY_HEADERS)


@router.get("/login")
async def login_form(request: Request) -> Response:
    if current_session(request) is not None:
        return RedirectResponse("/console/", status_code=303, headers=render.SECURITY_HEADERS)
    return _login_page()


def _refused(request: Request, address: str, why: str) -> AuditRecord:
    return _action(
        request, "unauthenticated", "login-refused", outcome="4", description=f"from {address}: {why}"
    )


def _console_roles(caller: Caller) -> list[str]:
    """The console roles a caller gets: its operator/auditor roles, as far as its scopes allow."""
    roles = []
    if caller.operator is not None and caller.allows(scopes.OPERATE):
        roles.append("operator")
    if caller.auditor is not None and caller.allows(scopes.SEARCH_AUDIT):
        roles.append("auditor")
    return roles


@router.post("/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _login_page("Sign-in refused: the form did not come from this console.", 403)
    token = (await _form(request)).get("token", "").strip()
    authenticator = authenticator_of(request)
    address = client_address(request)
    try:
        caller = await anyio.to_thread.run_sync(authenticator.identify, f"Bearer {token}", None, address)
    except Throttled as exc:
        await _audit(request, _refused(request, address, "throttled after repeated failures"))
        return _login_page(exc.outcome.errors[0].diagnostics, 429)
    except NotAuthenticated:  # the authenticator records the failed authentication too
        await _audit(request, _refused(request, address, "the token is not valid"))
        return _login_page("Sign-in refused: the token is not valid.", 401)
    roles = _console_roles(caller)
    if caller.system is not None or not roles:
        await _audit(
            request,
            _action(
                request,
                caller.name,
                "login-refused",
                outcome="4",
                description=f"from {address}: not an operator or auditor",
            ),
        )
        return _login_page("Sign-in refused: this console is for operators and auditors.", 403)
    value, _ = codec_of(request).issue(caller.name, roles, clock_of(request).now())
    await _audit(request, _action(request, caller.name, "login", description=f"from {address}"))
    response = RedirectResponse("/console/", status_code=303, headers=render.SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(codec_of(request).lifetime.total_seconds()),
        path="/console",
        httponly=True,
        secure=not _plain_loopback(request),
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    form = await _form(request)
    if not _same_origin(request) or not codec_of(request).csrf_ok(session, form.get("csrf")):
        return _forbidden(session, "Refused: the form's CSRF token is missing or wrong.")
    codec_of(request).revoke(session, clock_of(request).now())
    await _audit(request, _action(request, session.name, "logout"))
    response = _to_login()
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# -- operator pages ------------------------------------------------------------------------------------
@router.get("/overview")
async def overview_page(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("operator"):
        return _forbidden(session, "The overview is for operators.")
    ids = [s.id for s in settings_of(request).systems]
    now = clock_of(request).now()
    view = await anyio.to_thread.run_sync(overview, store_of(request), ids, now)
    rows = [
        [
            f'<a href="{esc(url("/console/messages", destination=d.destination))}">{esc(d.destination)}</a>',
            f'<span class="num">{d.depth}</span>',
            render.age(d.oldest_age),
            f'<span class="num">{d.delivered}</span>',
            f'<span class="num{" bad" if d.failed else ""}">{d.failed}</span>',
            f'<a class="num{" bad" if d.dead else ""}" href="/console/dead">{d.dead}</a>',
        ]
        for d in view.destinations
    ]
    cards = "".join(
        f'<div class="card"><h2>{esc(d.destination)}</h2>'
        f"{render.chart(d.buckets, f'{d.destination}: deliveries and failures, last hour')}"
        '<div class="legend">green: delivered, red: failed attempts, per 5 minutes</div></div>'
        for d in view.destinations
    )
    note = "" if view.complete else "<p class=legend>A busy hour: counted from its newest records only.</p>"
    body = (
        f"<p class=legend>As of {esc(when(now))}; deliveries and failures over the last hour.</p>"
        + table(
            ["Destination", "Queue depth", "Oldest waiting", "Delivered (1 h)", "Failed (1 h)", "Dead"],
            rows,
            "destinations",
        )
        + note
        + cards
    )
    return page("Overview", body, session)


def _filters_form(values: dict[str, str]) -> str:
    def field(name: str, label: str) -> str:
        return (
            f'<label>{esc(label)} <input name="{name}" id="filter-{name}" '
            f'value="{esc(values.get(name, ""))}" size="18"></label>'
        )

    options = "".join(
        f'<option value="{s}"{" selected" if values.get("state") == s else ""}>{s}</option>'
        for s in ("", *_STATES)
    )
    return (
        '<form method="get" action="/console/messages" class="filters" id="filters">'
        + field("sender", "Sender")
        + field("destination", "Destination")
        + field("kind", "Kind")
        + f'<label>State <select name="state" id="filter-state">{options}</select></label>'
        '<button type="submit" id="apply-filters">Filter</button></form>'
    )


@router.get("/messages")
async def messages_page(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("operator"):
        return _forbidden(session, "Messages are for operators.")
    values = {k: v.strip() for k, v in request.query_params.items() if k in ("sender", "destination", "kind")}
    state = request.query_params.get("state") or None
    offset_text = request.query_params.get("offset", "0")
    offset = int(offset_text) if offset_text.isdigit() else 0
    if state is not None and state not in _STATES:
        state = None
    filters = MessageFilter(
        sender=values.get("sender") or None,
        destination=values.get("destination") or None,
        kind=values.get("kind") or None,
        state=state,  # type: ignore[arg-type]  # checked against _STATES above
        limit=_PAGE_SIZE,
        offset=offset,
    )
    found = await anyio.to_thread.run_sync(store_of(request).list_messages, filters)
    rows = [
        [
            esc(when(m.received_at)),
            f'<a href="/console/messages/{esc(m.id)}">{esc(m.header_id)}</a>',
            esc(m.sender),
            esc(m.kind),
            f'<span class="{"bad" if m.state == "dead" else "ok" if m.state == "delivered" else ""}">'
            f"{esc(m.state)}</span>",
        ]
        for m in found
    ]
    more = ""
    if len(found) == _PAGE_SIZE:
        params = {**values, "state": state or "", "offset": str(offset + _PAGE_SIZE)}
        more = f'<p><a href="{esc(url("/console/messages", **params))}">Older messages</a></p>'
    body = (
        _filters_form({**values, "state": state or ""})
        + table(["Received", "MessageHeader.id", "Sender", "Kind", "State"], rows, "messages")
        + (more or ("<p>No messages match.</p>" if not found else ""))
    )
    return page("Messages", body, session)


def _delivery_rows(deliveries: list[DeliveryRecord], session: Session) -> list[list[str]]:
    rows = []
    for d in deliveries:
        button = (
            render.csrf_form(f"/console/deliveries/{d.id}/retry", session, "Retry", f"retry-{d.id}")
            if d.state == "dead"
            else ""
        )
        rows.append(
            [
                esc(d.destination),
                f'<span class="{"bad" if d.state == "dead" else ""}" id="state-{esc(d.id)}">'
                f"{esc(d.state)}</span>",
                f'<span class="num">{d.attempts}</span>',
                esc(d.last_error or ""),
                esc(when(d.dead_at or d.delivered_at)),
                button,
            ]
        )
    return rows


@router.get("/messages/{message_id}")
async def trace_page(request: Request, message_id: str) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("operator"):
        return _forbidden(session, "Message traces are for operators.")
    store = store_of(request)
    trace = await anyio.to_thread.run_sync(store.message_trace, message_id)
    if trace is None:
        return page("Not found", f"<p>No message {esc(message_id)}.</p>", session, 404)
    m = trace.message
    await _audit(
        request,
        _action(
            request,
            session.name,
            "view",
            message_id=m.id,
            header_id=m.header_id,
            citizen_key=m.citizen_key,
        ),
    )
    facts = table(
        ["Message id", "MessageHeader.id", "Sender", "Kind", "Received", "State"],
        [
            [
                esc(m.id),
                esc(m.header_id),
                esc(m.sender),
                esc(m.kind),
                esc(when(m.received_at)),
                f'<span id="message-state">{esc(m.state)}</span>',
            ]
        ],
        "message",
    )
    deliveries = table(
        ["Destination", "State", "Attempts", "Last error", "Delivered / dead at", ""],
        _delivery_rows([d.delivery for d in trace.deliveries], session),
        "deliveries",
    )
    attempts = table(
        ["Destination", "#", "Started", "Outcome", "HTTP", "Latency ms", "Detail"],
        [
            [
                esc(d.delivery.destination),
                str(a.number),
                esc(when(a.started_at)),
                esc(a.outcome),
                esc(a.status_code or ""),
                f"{a.latency.total_seconds() * 1000:.1f}",
                esc(a.detail),
            ]
            for d in trace.deliveries
            for a in d.attempts
        ],
        "attempts",
    )
    receipts = table(
        ["From", "Code", "Received"],
        [
            [esc(r.from_system), esc(r.code), esc(when(r.received_at))]
            for d in trace.deliveries
            for r in d.receipts
        ],
        "receipts",
    )
    body = (
        facts
        + "<h2>Deliveries</h2>"
        + deliveries
        + "<h2>Attempts</h2>"
        + attempts
        + "<h2>Receipts</h2>"
        + receipts
    )
    return page("Message trace", body, session)


@router.get("/dead")
async def dead_page(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("operator"):
        return _forbidden(session, "Dead letters are for operators.")
    dead = await anyio.to_thread.run_sync(store_of(request).list_deliveries, "dead", 500, 0)
    rows = [
        [f'<a href="/console/messages/{esc(d.message_id)}">{esc(d.message_id)}</a>', *cells]
        for d, cells in zip(dead, _delivery_rows(dead, session), strict=True)
    ]
    body = (
        table(["Message", "Destination", "State", "Attempts", "Last error", "Dead at", ""], rows, "dead")
        if dead
        else '<p id="no-dead">No dead letters.</p>'
    )
    return page("Dead letters", body, session)


def _replay(store: OutboxStore, delivery_id: str, actor: str, now: Any) -> str:
    """Replay a dead delivery and audit it; the message id, for the trace page."""
    dead = next((d for d in store.list_deliveries("dead", limit=100_000) if d.id == delivery_id), None)
    if dead is None:
        raise NotFound(delivery_id)
    store.retry_dead(delivery_id, now)
    trace = store.message_trace(dead.message_id)
    header_id = trace.message.header_id if trace is not None else dead.message_id
    store.append_audit_many(
        [
            audit.delivery_outcome(
                recorded=now,
                actor=actor,
                destination=dead.destination,
                message_id=dead.message_id,
                header_id=header_id,
                outcome="replayed",
                citizen_key=dead.citizen_key,
            ),
            audit.console_action(
                recorded=now,
                actor=actor,
                action="retry",
                message_id=dead.message_id,
                header_id=header_id,
                citizen_key=dead.citizen_key,
                description=f"replayed delivery {delivery_id} to {dead.destination}",
            ),
        ]
    )
    return dead.message_id


@router.post("/deliveries/{delivery_id}/retry")
async def retry(request: Request, delivery_id: str) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("operator"):
        return _forbidden(session, "Replaying dead letters is for operators.")
    form = await _form(request)
    if not _same_origin(request) or not codec_of(request).csrf_ok(session, form.get("csrf")):
        await _audit(
            request,
            _action(request, session.name, "retry-refused", outcome="4", description="bad CSRF token"),
        )
        return _forbidden(session, "Refused: the form's CSRF token is missing or wrong.")
    now = clock_of(request).now()
    try:
        message_id = await anyio.to_thread.run_sync(
            _replay, store_of(request), delivery_id, session.name, now
        )
    except (NotFound, InvalidTransition):
        return page(
            "Not replayed",
            "<p>That delivery is not a dead letter (any more).</p>"
            '<p><a href="/console/dead">Back to the dead letters</a></p>',
            session,
            409,
        )
    return RedirectResponse(
        f"/console/messages/{message_id}", status_code=303, headers=render.SECURITY_HEADERS
    )


# -- the audit trail (auditors) ------------------------------------------------------------------------
_AUDIT_FIELDS = ("date", "agent", "entity", "patient")


def _audit_rows(found: list[Any]) -> list[list[str]]:
    rows = []
    for entry, body in found:
        subtype = ((body.get("subtype") or [{}])[0]).get("code", entry.record.action)
        entities = [
            str(((e.get("what") or {}).get("identifier") or {}).get("value", ""))
            for e in body.get("entity") or ()
            if (e.get("what") or {}).get("identifier")
        ]
        rows.append(
            [
                str(entry.seq),
                esc(when(entry.record.recorded_at)),
                esc(subtype),
                esc(entry.record.actor),
                esc(body.get("outcome", "")),
                esc(", ".join(entities)),
                esc(body.get("outcomeDesc", "")),
            ]
        )
    return rows


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _to_login()
    if not session.has("auditor"):
        return _forbidden(session, "The audit trail is for auditors.")
    params = [(k, v.strip()) for k, v in request.query_params.multi_items() if k in _AUDIT_FIELDS and v]
    fields = "".join(
        f'<label>{name} <input name="{name}" id="audit-{name}" '
        f'value="{esc(dict(params).get(name, ""))}" size="16"></label> '
        for name in _AUDIT_FIELDS
    )
    form = (
        f'<form method="get" action="/console/audit" class="filters" id="audit-filters">{fields}'
        '<button type="submit" id="search-audit">Search</button></form>'
    )
    secret = settings_of(request).store.citizen_key_secret.get_secret_value().encode("utf-8")
    try:
        query = audit_search.parse_query([*params, ("_count", "200")], secret)
    except InvalidInput as exc:
        message = "; ".join(i.diagnostics for i in exc.outcome.issues)
        return page("Audit trail", form + f'<p class="error">{esc(message)}</p>', session, 400)
    found, more = await anyio.to_thread.run_sync(audit_search.search, store_of(request), query)
    # The query may name a citizen (patient=CPR): it is kept in the audit trail, nowhere else.
    await _audit(
        request,
        _action(request, session.name, "audit-search", description=urlencode(params) or "(all)"),
    )
    note = "<p class=legend>The first 200 matches; narrow the search to see others.</p>" if more else ""
    body = (
        form
        + table(
            ["#", "Recorded", "Event", "Actor", "Outcome", "About", "Description"],
            _audit_rows(found),
            "audit",
        )
        + note
    )
    return page("Audit trail", body, session)
