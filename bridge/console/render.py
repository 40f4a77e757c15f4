"""HTML for the console: a page layout, tables, forms and a small inline SVG chart.

Plain string building with every value escaped by ``esc`` (no template engine: the pages are few and
small, and a dependency would add more than it saves). Nothing is fetched from anywhere: the style
sheet is inline, the chart is inline SVG, and no page runs JavaScript. The response headers forbid
everything else (``SECURITY_HEADERS``: a Content-Security-Policy without scripts or remote sources,
no framing, no referrer to other sites, no caching).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from urllib.parse import quote

from fastapi.responses import HTMLResponse

from bridge.console.session import Session
from bridge.console.stats import Bucket

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send Origin: null
    "Cache-Control": "no-store",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1b2430;background:#f5f7fa}
header{background:#1f4e79;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}
header form{display:inline;margin:0}header button{background:none;border:1px solid #fff;color:#fff}
main{padding:1rem 1.2rem}h1{font-size:1.3rem}
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7e0;padding:.3rem .6rem;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#e8eef5}.num{text-align:right}.bad{color:#a61b1b;font-weight:600}.ok{color:#1b6e2d}
.card{display:inline-block;background:#fff;border:1px solid #d0d7e0;padding:.6rem;margin:0 .8rem .8rem 0}
.card h2{font-size:1rem;margin:.1rem 0 .4rem}.legend{font-size:.8rem;color:#555}
form.filters input,form.filters select{margin-right:.5rem}.error{color:#a61b1b}
button{cursor:pointer}code{font-size:.85rem}
"""


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, **params: str | None) -> str:
    """A console URL with its query parameters (values percent-encoded, empty ones left out)."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
    return f"{path}?{query}" if query else path


def when(moment: datetime | None) -> str:
    """A time as shown in the console: UTC, to the second."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def age(span: timedelta | None) -> str:
    """A duration in the largest fitting units (``2 h 5 min``, ``40 s``)."""
    if span is None:
        return "-"
    seconds = int(span.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _nav(session: Session | None) -> str:
    if session is None:
        return "<header><strong>fhir-bridge console</strong></header>"
    links = []
    if session.has("operator"):
        links += [
            '<a href="/console/overview">Overview</a>',
            '<a href="/console/messages">Messages</a>',
            '<a href="/console/dead">Dead letters</a>',
        ]
    if session.has("auditor"):
        links.append('<a href="/console/audit">Audit trail</a>')
    logout = (
        '<form method="post" action="/console/logout">'
        f'<input type="hidden" name="csrf" value="{esc(session.csrf)}">'
        '<button type="submit" id="logout">Sign out</button></form>'
    )
    return (
        "<header><strong>fhir-bridge console</strong>"
        + "".join(links)
        + f'<span class="who">{esc(session.name)}</span>{logout}</header>'
    )


def page(title: str, body: str, session: Session | None, status: int = 200) -> HTMLResponse:
    """A whole console page with the security headers."""
    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} - fhir-bridge</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>{_nav(session)}<main><h1>{esc(title)}</h1>{body}</main>"
        "</body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    """A table; ``rows`` hold HTML already escaped (cells are built with ``esc``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def csrf_form(action: str, session: Session, label: str, button_id: str) -> str:
    """A one-button POST form carrying the session's CSRF token."""
    return (
        f'<form method="post" action="{esc(action)}">'
        f'<input type="hidden" name="csrf" value="{esc(session.csrf)}">'
        f'<button type="submit" id="{esc(button_id)}">{esc(label)}</button></form>'
    )


def chart(buckets: Sequence[Bucket], title: str) -> str:
    """An inline SVG bar chart: deliveries (green) and failed attempts (red) per slice of the window."""
    width, height, pad = 300, 90, 14
    peak = max([1, *(max(b.delivered, b.failed) for b in buckets)])
    slot = (width - 2 * pad) / max(len(buckets), 1)
    bar = max(slot / 2 - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" '
        f'viewBox="0 0 {width} {height + 16}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#888"/>',
    ]
    for i, b in enumerate(buckets):
        x = pad + i * slot
        for offset, count, colour in ((0.0, b.delivered, "#2e8b57"), (bar + 1, b.failed, "#c0392b")):
            h = (height - pad) * count / peak
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{esc(b.start.strftime("%H:%M"))}: {count}</title></rect>'
            )
    if buckets:
        first, last = buckets[0].start, buckets[-1].start
        parts.append(
            f'<text x="{pad}" y="{height + 13}" font-size="10">{esc(first.strftime("%H:%M"))}</text>'
        )
        parts.append(
            f'<text x="{width - pad}" y="{height + 13}" font-size="10" text-anchor="end">'
            f"{esc(last.strftime('%H:%M'))}</text>"
        )
    parts.append(f'<text x="{pad}" y="10" font-size="10">max {peak}</text></svg>')
    return "".join(parts)
