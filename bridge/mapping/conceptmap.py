"""Code translations as FHIR R4 ConceptMap resources (the files under ``mappings/conceptmaps/``).

The ``source`` side of each group is the municipal record's code, the ``target`` side the FHIR code.
Codes are looked up without their system, across all groups (a map may list LOINC and NPU targets in two
groups); municipal -> FHIR takes the first group that has the source code.
Municipal -> FHIR takes an element's first target; FHIR -> municipal accepts any target of an element
(so the UUID and the legacy FSIII code both map back), and refuses a target claimed by two source codes,
because then the way back would be a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bridge.errors import MappingSpecError

#: Equivalences under which a target may be used to translate (ConceptMap.group.element.target.equivalence).
_USABLE = {"relatedto", "equivalent", "equal", "wider", "subsumes", "narrower", "specializes", "inexact"}


@dataclass(slots=True)
class ConceptMap:
    id: str
    url: str
    source_system: str | None
    target_system: str | None
    forward: dict[str, str] = field(default_factory=dict)
    reverse: dict[str, str] = field(default_factory=dict)

    def to_fhir(self, code: str) -> str | None:
        return self.forward.get(code)

    def to_municipal(self, code: str) -> str | None:
        return self.reverse.get(code)


def parse_conceptmap(resource: dict[str, Any], file: str) -> ConceptMap:
    """Build the lookup tables of one ConceptMap; a broken one raises MappingSpecError."""
    if resource.get("resourceType") != "ConceptMap":
        raise MappingSpecError(file, "resourceType", "a ConceptMap file holds one ConceptMap resource")
    cm_id = resource.get("id")
    if not isinstance(cm_id, str) or not cm_id:
        raise MappingSpecError(file, "id", "a ConceptMap needs an id; specs refer to it by id")
    groups = resource.get("group")
    if not isinstance(groups, list) or not groups:
        raise MappingSpecError(file, "group", "a ConceptMap needs at least one group")
    cmap = ConceptMap(
        id=cm_id,
        url=str(resource.get("url", "")),
        source_system=groups[0].get("source"),
        target_system=groups[0].get("target"),
    )
    elements = [
        (g, f"group[{g}].element[{i}]", element)
        for g, group in enumerate(groups)
        for i, element in enumerate(group.get("element") or [])
    ]
    seen: set[tuple[int, str]] = set()
    for g, where, element in elements:
        code = element.get("code")
        if not isinstance(code, str):
            raise MappingSpecError(file, f"{where}.code", "each element needs a source code")
        if (g, code) in seen:
            raise MappingSpecError(file, f"{where}.code", f"source code {code!r} appears twice in one group")
        seen.add((g, code))
        targets = [t for t in element.get("target") or [] if t.get("equivalence", "equivalent") in _USABLE]
        if not targets:
            raise MappingSpecError(file, f"{where}.target", f"source code {code!r} has no usable target")
        for j, target in enumerate(targets):
            tcode = target.get("code")
            if not isinstance(tcode, str):
                raise MappingSpecError(file, f"{where}.target[{j}].code", "each target needs a code")
            if j == 0:
                cmap.forward.setdefault(code, tcode)
            previous = cmap.reverse.get(tcode)
            if previous is not None and previous != code:
                raise MappingSpecError(
                    file,
                    f"{where}.target[{j}].code",
                    f"target {tcode!r} maps back to both {previous!r} and {code!r}",
                )
            cmap.reverse[tcode] = code
    return cmap


def load_conceptmaps(directory: Path) -> dict[str, ConceptMap]:
    """Every ``*.json`` ConceptMap under ``directory``, by id."""
    maps: dict[str, ConceptMap] = {}
    if not directory.is_dir():
        return maps
    for path in sorted(directory.glob("*.json")):
        try:
            resource = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise MappingSpecError(path.name, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from exc
        cmap = parse_conceptmap(resource, path.name)
        if cmap.id in maps:
            raise MappingSpecError(path.name, "id", f"ConceptMap id {cmap.id!r} is used by another file too")
        maps[cmap.id] = cmap
    return maps
