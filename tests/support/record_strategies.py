"""Hypothesis strategies for valid municipal records (municipal-v1)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

from bridge.fhir.identifiers import gln_check_digit
from bridge.municipal import fsiii
from bridge.municipal.model import OBSERVATION_CODES

_CODES = fsiii.table()
HOME_CARE = sorted(c for c, (g, _) in _CODES.items() if g == "home-care-condition")
NURSING = sorted(c for c, (g, _) in _CODES.items() if g == "nursing-condition")
INTERVENTIONS = sorted(c for c, (g, _) in _CODES.items() if g.endswith("-intervention"))

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzÆØÅæøåé"
word = st.text(alphabet=LETTERS, min_size=1, max_size=12)
words = st.lists(word, min_size=1, max_size=4).map(" ".join)
text = (
    st.lists(
        st.text(alphabet=LETTERS + "0123456789.,;:!?()'\"-/ \n", min_size=1, max_size=40),
        min_size=1,
        max_size=5,
    )
    .map(" ".join)
    .map(str.strip)
    .filter(bool)
)
item_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/#-]{0,15}", fullmatch=True)
day = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2035, 12, 31))
offset = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=1)), dt.timezone(dt.timedelta(hours=2))])
moment = st.builds(
    lambda d, secs, tz: dt.datetime.combine(d, dt.time()).replace(tzinfo=tz) + dt.timedelta(seconds=secs),
    day,
    st.integers(0, 86_399),
    offset,
)
phone = st.from_regex(r"\+45 [0-9]{8}", fullmatch=True)
severity = st.sampled_from([0, 1, 2, 3, 4, 9])


@st.composite
def cpr(draw: st.DrawFn) -> str:
    born = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31)))
    head = born.strftime("%d%m%y")
    if draw(st.booleans()):
        return head + str(draw(st.integers(0, 3))) + draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    return head + str(draw(st.integers(0, 3))) + draw(st.from_regex(r"[A-Z]{3}", fullmatch=True))


@st.composite
def gln(draw: st.DrawFn) -> str:
    first = draw(st.from_regex(r"57[0-9]{10}", fullmatch=True))
    return first + str(gln_check_digit(first))


def sor() -> st.SearchStrategy[str]:
    return st.from_regex(r"[1-9][0-9]{8,14}", fullmatch=True)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


@st.composite
def conditions(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 6))
    out = []
    for i in range(n):
        home = draw(st.booleans())
        out.append(
            _drop_none(
                {
                    "id": f"c{i}-{draw(item_id)}",
                    "code": draw(st.sampled_from(HOME_CARE if home else NURSING)),
                    "clinical_status": draw(st.sampled_from(["active", "inactive", "resolved"])),
                    "verification_status": draw(
                        st.sampled_from(["confirmed", "unconfirmed", "entered-in-error"])
                    ),
                    "severity": draw(severity) if home else None,
                    "recorded": draw(day).isoformat(),
                    "follow_up": draw(optional(day.map(dt.date.isoformat))),
                }
            )
        )
    return out


@st.composite
def observation(draw: st.DrawFn, i: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(OBSERVATION_CODES)))
    (system, code), unit = draw(st.sampled_from(sorted(OBSERVATION_CODES[kind].items())))
    values: dict[str, Any]
    if kind == "blood-pressure":
        values = {"systolic": draw(st.integers(60, 250)) * 1.0, "diastolic": draw(st.integers(30, 150)) * 1.0}
    else:
        values = {"value": draw(st.integers(0, 5000)) / 10}
    return _drop_none(
        {
            "id": f"o{i}",
            "kind": kind,
            "code": {"system": system, "code": code},
            "unit": unit,
            "effective": draw(moment).isoformat(),
            "performer": draw(optional(words)),
            "status": draw(st.sampled_from(["final", "amended"])),
            **values,
        }
    )


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record as a JSON-ready dict."""
    conds = draw(conditions())
    home_ids = [c["id"] for c in conds if "severity" in c]
    all_ids = [c["id"] for c in conds]
    goals = [
        {
            "id": f"g{i}",
            "condition_id": cid,
            "expected_severity": draw(severity),
            "start": draw(day).isoformat(),
            "lifecycle_status": draw(st.sampled_from(["planned", "active", "completed"])),
        }
        for i, cid in enumerate(draw(st.lists(st.sampled_from(home_ids), max_size=3)) if home_ids else [])
    ]
    interventions = []
    for i in range(draw(st.integers(0, 5))):
        completed = draw(st.booleans())
        local = draw(st.booleans())
        interventions.append(
            _drop_none(
                {
                    "id": f"i{i}",
                    "kind": "completed" if completed else "planned",
                    "code": draw(st.sampled_from(INTERVENTIONS)),
                    "local_code": draw(word) if local else None,
                    "local_text": draw(words) if local else None,
                    "status": draw(
                        st.sampled_from(
                            ["completed", "entered-in-error"]
                            if completed
                            else ["draft", "active", "on-hold", "revoked", "completed"]
                        )
                    ),
                    "start": draw(moment).isoformat()
                    if completed
                    else draw(st.one_of(day, moment)).isoformat(),
                    "end": None if completed else draw(optional(day.map(dt.date.isoformat))),
                    "condition_ids": draw(st.lists(st.sampled_from(all_ids), unique=True, max_size=3))
                    if all_ids
                    else [],
                }
            )
        )
    medications = [
        _drop_none(
            {
                "id": f"m{i}",
                "name": draw(words),
                "atc": draw(optional(st.from_regex(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}", fullmatch=True))),
                "dose": draw(optional(text)),
                "route": draw(optional(word)),
                "status": draw(st.sampled_from(["active", "completed", "stopped", "on-hold"])),
                "start": draw(optional(day.map(dt.date.isoformat))),
                "end": draw(optional(day.map(dt.date.isoformat))),
            }
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    notes = [
        {
            "id": f"n{i}",
            "time": draw(moment).isoformat(),
            "author": {"name": draw(words), "role": draw(words)},
            "category": draw(st.sampled_from(["nursing", "home-care", "therapy", "medication", "general"])),
            "text": draw(text),
        }
        for i in range(draw(st.integers(0, 3)))
    ]
    relatives = [
        _drop_none(
            {
                "id": f"r{i}",
                "name": draw(words),
                "relationship": draw(st.sampled_from(["spouse", "child", "parent", "friend", "neighbour"])),
                "phone": draw(optional(phone)),
            }
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    gp = draw(
        optional(
            st.builds(
                lambda name, yder, s, p: _drop_none({"name": name, "ydernummer": yder, "sor": s, "phone": p}),
                words,
                st.from_regex(r"[0-9]{5,6}", fullmatch=True),
                optional(sor()),
                optional(phone),
            )
        )
    )
    number = draw(cpr())
    address = draw(
        optional(
            st.builds(
                lambda line, postal, city, code: _drop_none(
                    {"lines": [line], "postal_code": postal, "city": city, "municipality_code": code}
                ),
                words,
                st.from_regex(r"[1-9][0-9]{3}", fullmatch=True),
                optional(words),
                optional(st.from_regex(r"0[0-9]{3}", fullmatch=True)),
            )
        )
    )
    return {
        "metadata": {
            "source_system": draw(words),
            "record_id": draw(item_id),
            "version": draw(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True)),
            "last_changed": draw(moment).isoformat(),
        },
        "citizen": _drop_none(
            {
                "cpr": number,
                "name": {"given": draw(st.lists(word, max_size=3)), "family": draw(word)},
                "address": address,
                "deceased": draw(st.booleans()),
                "phone": draw(optional(phone)),
            }
        ),
        "organization": {
            "municipality": _drop_none(
                {
                    "name": draw(words),
                    "code": draw(st.from_regex(r"0[0-9]{3}", fullmatch=True)),
                    "sor": draw(optional(sor())),
                    "gln": draw(optional(gln())),
                }
            ),
            "unit": _drop_none(
                {
                    "name": draw(words),
                    "kind": draw(
                        st.sampled_from(
                            ["home-care-group", "nursing-home", "home-nursing", "rehabilitation", "other"]
                        )
                    ),
                    "sor": draw(optional(sor())),
                    "gln": draw(optional(gln())),
                }
            ),
        },
        "conditions": conds,
        "goals": goals,
        "interventions": interventions,
        "observations": [draw(observation(i)) for i in range(draw(st.integers(0, 4)))],
        "medications": medications,
        "journal_notes": notes,
        "contacts": _drop_none({"relatives": relatives, "general_practitioner": gp}),
    }
