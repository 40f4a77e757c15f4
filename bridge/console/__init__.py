"""The operator console: server-rendered pages at ``/console`` for operators and auditors.

``install(app)`` mounts the pages on a bridge app (``bridge.app.create_app`` does, for the API roles).
Pages: ``/console/login`` (an operator or auditor token typed into a form, checked by the app's
``Authenticator``; a system's token is refused), ``/console/overview`` (per destination: queue depth,
oldest waiting delivery, deliveries and failures over the last hour with an inline SVG chart),
``/console/messages`` (filters: sender, destination, kind, state), ``/console/messages/{id}`` (the
trace), ``/console/dead`` (dead letters with a Retry button), ``/console/audit`` (auditors: the audit
trail searched by date, agent, entity, patient) and ``/console/logout``.

The session is a signed cookie (``bridge.console.session``): HttpOnly, SameSite=Strict, with an expiry,
and Secure except on plain http between loopback addresses (a browser would not send a Secure cookie
over http, and loopback traffic never leaves the machine). No page runs JavaScript or loads anything
from elsewhere.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from bridge.console.pages import router
from bridge.console.session import DEFAULT_LIFETIME, SessionCodec, derive_key
from bridge.settings import Settings


def install(app: FastAPI, settings: Settings, lifetime: timedelta = DEFAULT_LIFETIME) -> None:
    """Mount the console on ``app``; sessions are signed with a key derived from ``settings``."""
    secret = settings.store.citizen_key_secret.get_secret_value()
    app.state.console_sessions = SessionCodec(derive_key(secret), lifetime)
    app.include_router(router)
