"""FSIII (Fælles Sprog III) codes the record uses, from the table shipped beside this module.

Source: KL's FSIII CodeSystem ``urn:oid:1.2.208.176.2.21`` (hl7dk/kl-term, version 20240530), reduced to
the leaf codes under the condition and intervention groups and the severity scale. Each concept exists
with a UUID code and with a legacy code; both are accepted. ``build_table`` regenerates the table from
the published CodeSystem (a test checks that the shipped table is current).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Literal

SYSTEM = "urn:oid:1.2.208.176.2.21"

#: Group roots (UUID and legacy code) -> the group name used by the bridge.
ROOTS: dict[str, str] = {
    "4db72d65-7ec1-45b4-89c3-5017c35d085e": "nursing-condition",  # Kommunale sygeplejetilstande
    "I": "nursing-condition",
    "d49d6b0c-c067-4469-b92d-3842822c4971": "home-care-condition",  # Kommunale pleje- og omsorgstilstande
    "J": "home-care-condition",
    "cac857f7-2957-4fc7-a814-9e7fc450270a": "nursing-intervention",  # Kommunale sygeplejeindsatser
    "G": "nursing-intervention",
    "b07bbb6d-16b2-4cee-b5a5-771ca5beb67c": "home-care-intervention",  # Kommunale pleje- og omsorgsindsatser
    "H": "home-care-intervention",
    "2c02a704-deee-4878-9378-1167613b3da6": "severity",  # Funktionsevne skalering
    "B": "severity",
}

Group = Literal[
    "nursing-condition", "home-care-condition", "nursing-intervention", "home-care-intervention", "severity"
]


def build_table(codesystem: dict[str, Any]) -> dict[str, list[str]]:
    """``{code: [group, display]}`` for every leaf code under ``ROOTS``, from the FSIII CodeSystem."""
    table: dict[str, list[str]] = {}

    def walk(concepts: list[dict[str, Any]], group: str | None) -> None:
        for concept in concepts:
            code = concept["code"]
            here = ROOTS.get(code, group)
            children = concept.get("concept", [])
            if here is not None and not children and code not in ROOTS:
                table[code] = [here, concept.get("display", "")]
            walk(children, here)

    walk(codesystem["concept"], None)
    return dict(sorted(table.items()))


@cache
def table() -> dict[str, list[str]]:
    text = resources.files("bridge.municipal").joinpath("fsiii-codes.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    codes: dict[str, list[str]] = data["codes"]
    return codes


def group(code: str) -> str | None:
    entry = table().get(code)
    return entry[0] if entry else None


def display(code: str) -> str | None:
    entry = table().get(code)
    return entry[1] if entry else None


def condition_kind(code: str) -> Literal["nursing", "home-care"] | None:
    g = group(code)
    if g == "nursing-condition":
        return "nursing"
    if g == "home-care-condition":
        return "home-care"
    return None


def intervention_kind(code: str) -> Literal["nursing", "home-care"] | None:
    g = group(code)
    if g == "nursing-intervention":
        return "nursing"
    if g == "home-care-intervention":
        return "home-care"
    return None
