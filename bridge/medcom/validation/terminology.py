"""The shipped profiles and value sets, loaded once and expanded to plain code sets.

Everything is read from the package folder ``bridge/medcom/profiles`` (see its SOURCES.md): the
official MedCom StructureDefinitions, ValueSets and CodeSystems, plus the codes of the base FHIR R4
value sets the profiles bind as *required*. A value set is expanded at load time to the set of
``(system, code)`` pairs it allows; one that cannot be expanded from shipped data (an include with a
filter, or a code system not shipped) expands to ``None`` and its bindings are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson

from bridge.fhir.identifiers import CPR_SYSTEM, GLN_SYSTEMS, SOR_SYSTEM, XECPR_SYSTEM

PROFILES_PACKAGE = "bridge.medcom.profiles"
_DK = "http://hl7.dk/fhir/core/StructureDefinition/"
#: The Identifier.system each DK-core identifier profile fixes (DK-core 3.x, hl7.dk/fhir/core). MedCom
#: slices identifiers by system with these profiles as slice types; DK-core itself is not shipped.
DK_CORE_IDENTIFIER_SYSTEMS: dict[str, tuple[str, ...]] = {
    _DK + "dk-core-cpr-identifier": (CPR_SYSTEM,),
    _DK + "dk-core-x-ecpr-identifier": (XECPR_SYSTEM,),
    _DK + "dk-core-sor-identifier": (SOR_SYSTEM,),
    _DK + "dk-core-gln-identifier": tuple(sorted(GLN_SYSTEMS)),
    _DK + "dk-core-kombit-org-identifier": ("https://kombit.dk/sts/organisation",),
    _DK + "dk-core-cvr-identifier": ("urn:oid:2.16.840.1.113883.2.24.1.1",),
}


@dataclass(frozen=True, slots=True)
class CodeSet:
    """An expanded value set: the allowed (system, code) pairs and, for ``code`` elements, the codes."""

    url: str
    pairs: frozenset[tuple[str, str]]
    codes: frozenset[str]

    def has_coding(self, system: Any, code: Any) -> bool:
        return isinstance(system, str) and isinstance(code, str) and (system, code) in self.pairs

    def has_code(self, code: Any) -> bool:
        return isinstance(code, str) and code in self.codes


def canonical(url: str) -> str:
    """A canonical URL without its ``|version``."""
    return url.split("|", 1)[0]


@cache
def _resources() -> dict[str, dict[str, Any]]:
    """Every shipped conformance resource by canonical URL (without version)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in resources.files(PROFILES_PACKAGE).iterdir():
        name = entry.name
        if not name.endswith(".json") or not name[:1].isupper():
            continue
        data = orjson.loads(entry.read_bytes())
        url = data.get("url")
        if isinstance(url, str):
            found[canonical(url)] = data
    return found


def structure_definition(url: str) -> dict[str, Any] | None:
    """The shipped StructureDefinition with this canonical URL, if any."""
    data = _resources().get(canonical(url))
    return data if data is not None and data.get("resourceType") == "StructureDefinition" else None


def shipped_version(url: str) -> str | None:
    """The business version of a shipped conformance resource."""
    data = _resources().get(canonical(url))
    version = data.get("version") if data is not None else None
    return version if isinstance(version, str) else None


@cache
def pinned_versions(roots: tuple[str, ...]) -> dict[str, str]:
    """Profiles that the profiles reachable from ``roots`` reference with a ``|version`` pin that
    differs from the shipped version: canonical URL -> pinned version."""
    pins: dict[str, str] = {}
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        sd = structure_definition(url)
        if sd is None:
            continue
        for el in sd["snapshot"]["element"]:
            for t in el.get("type", []):
                for ref in [*t.get("profile", []), *t.get("targetProfile", [])]:
                    target, _, version = ref.partition("|")
                    if structure_definition(target) is None:
                        continue
                    todo.append(target)
                    if version and version != shipped_version(target):
                        pins[target] = version
    return pins


def shipped_profiles() -> list[str]:
    """Canonical URLs of every shipped StructureDefinition."""
    return sorted(u for u, d in _resources().items() if d.get("resourceType") == "StructureDefinition")


@cache
def profile_by_name(name: str) -> str | None:
    """Find a shipped profile by its last URL segment (invariants name old ``medcomfhir.dk/fhir/`` URLs)."""
    tail = canonical(name).rsplit("/", 1)[-1]
    for url in shipped_profiles():
        if url.rsplit("/", 1)[-1] == tail:
            return url
    return None


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out.extend(_concepts(c.get("concept", [])))
    return out


@cache
def _base_value_sets() -> dict[str, dict[str, Any]]:
    raw = orjson.loads(resources.files(PROFILES_PACKAGE).joinpath("fhir-r4-required-codes.json").read_bytes())
    return {canonical(k): v for k, v in raw["valueSets"].items()}


def _code_system_codes(system: str) -> list[str] | None:
    cs = _resources().get(system)
    if cs is None or cs.get("resourceType") != "CodeSystem" or cs.get("content") not in ("complete", None):
        return None
    return _concepts(cs.get("concept", []))


def _include(part: dict[str, Any], seen: frozenset[str]) -> set[tuple[str, str]] | None:
    if part.get("filter"):
        return None
    pairs: set[tuple[str, str]] = set()
    system = part.get("system")
    if system is not None:
        if part.get("concept"):
            codes: list[str] | None = [c["code"] for c in part["concept"]]
        else:
            codes = _code_system_codes(system)
        if codes is None:
            return None
        pairs.update((system, c) for c in codes)
    for vs_url in part.get("valueSet", []):
        nested = expand(vs_url, seen)
        if nested is None:
            return None
        pairs.update(nested.pairs)
    return pairs


@cache
def _expand(url: str, seen: frozenset[str]) -> CodeSet | None:
    base = _base_value_sets().get(url)
    if base is not None:
        codes = frozenset(base["codes"])
        return CodeSet(url, frozenset((base["system"], c) for c in codes), codes)
    vs = _resources().get(url)
    if vs is None or vs.get("resourceType") != "ValueSet" or url in seen:
        return None
    seen = seen | {url}
    compose = vs.get("compose", {})
    pairs: set[tuple[str, str]] = set()
    for part in compose.get("include", []):
        got = _include(part, seen)
        if got is None:
            return None
        pairs |= got
    for part in compose.get("exclude", []):
        got = _include(part, seen)
        if got is not None:
            pairs -= got
    return CodeSet(url, frozenset(pairs), frozenset(c for _, c in pairs))


def expand(url: str, seen: frozenset[str] = frozenset()) -> CodeSet | None:
    """The expansion of a shipped value set (by canonical URL, version ignored), or None."""
    return _expand(canonical(url), seen)


@cache
def value_set_by_name(name: str) -> CodeSet | None:
    """Expand a shipped value set found by its last URL segment (for ``memberOf`` with old URLs)."""
    tail = canonical(name).rsplit("/", 1)[-1]
    for url, data in _resources().items():
        if data.get("resourceType") == "ValueSet" and url.rsplit("/", 1)[-1] == tail:
            return expand(url)
    return expand(name)
