"""The commonest invariants as plain Python, with the compiled FHIRPath behind them for the rest.

A HospitalNotification evaluates about 86 invariants, and most are the same few base ones on every
resource and entry (``dom-2`` ... ``dom-6``, ``bdl-5``, ``bdl-8``) or on the Bundle and its
Organizations. Each is recognised here by its exact expression text, once, when a profile is
compiled. Its fast path reads the JSON directly for the shapes messages have (a resource without
``contained``, an entry whose ``resource`` is an object, string ``fullUrl`` and ``system`` values) and
returns ``None`` for anything else, which the general evaluator (:mod:`fhirpath`) then answers. So
an unusual message costs what it did before, and every answer equals the general evaluator's:
``tests/unit/medcom/test_fastpaths.py`` checks that on generated inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.medcom.validation.fhirpath import Coll, Env, Fn

#: A fast path: the invariant's result, or None to let the general evaluator answer.
FastPath = Callable[[Env, Coll], Coll | None]


def _one_object(focus: Coll) -> dict[str, Any] | None:
    if len(focus) == 1:
        value = focus[0]
        if isinstance(value, dict):
            return value
    return None


def _count(value: Any) -> int:
    """How many items FHIRPath sees in a JSON value (arrays flattened, nulls dropped)."""
    if value is None:
        return 0
    if isinstance(value, list):
        return sum(1 for v in value if v is not None)
    return 1


def no_contained(env: Env, focus: Coll) -> Coll | None:
    """dom-2, dom-3, dom-4, dom-5: each is true of a resource without contained resources."""
    resource = _one_object(focus)
    if resource is None or resource.get("contained") is not None:
        return None
    return [True]


def narrative_div_exists(env: Env, focus: Coll) -> Coll | None:
    """dom-6 ``text.`div`.exists()``."""
    resource = _one_object(focus)
    if resource is None:
        return None
    text = resource.get("text")
    if text is None:
        return [False]
    if isinstance(text, dict):
        div = text.get("div")
        if isinstance(div, str):
            return [True]
        if div is None:
            return [False]
    return None


def entry_has_content(env: Env, focus: Coll) -> Coll | None:
    """bdl-5 ``resource.exists() or request.exists() or response.exists()``."""
    entry = _one_object(focus)
    if entry is None:
        return None
    resource = entry.get("resource")
    if isinstance(resource, dict):
        return [True]
    if resource is None and entry.get("request") is None and entry.get("response") is None:
        return [False]
    return None


def full_url_without_history(env: Env, focus: Coll) -> Coll | None:
    """bdl-8 ``fullUrl.contains('/_history/').not()``."""
    entry = _one_object(focus)
    if entry is None:
        return None
    url = entry.get("fullUrl")
    if isinstance(url, str):
        return ["/_history/" not in url]
    if url is None:
        return []
    return None


def entries_match_bundle_type(element: str, types: frozenset[str]) -> FastPath:
    """bdl-3 and bdl-4: every entry has ``element`` (request, response) exactly when the Bundle
    (``%resource``) is of one of ``types``."""

    def fast(env: Env, focus: Coll) -> Coll | None:
        bundle = _one_object(focus)
        resource = env.resource
        if bundle is None or not isinstance(resource, dict):
            return None
        bundle_type = resource.get("type")
        if not isinstance(bundle_type, str):
            return None
        expected = bundle_type in types
        entries = bundle.get("entry")
        if entries is None:
            return [True]
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if not isinstance(entry, dict):
                return None
            part = entry.get(element)
            if part is not None and not isinstance(part, dict):
                return None
            if (part is not None) != expected:
                return [False]
        return [True]

    return fast


def no_total(env: Env, focus: Coll) -> Coll | None:
    """bdl-1 ``total.empty() or (type = 'searchset') or (type = 'history')``."""
    bundle = _one_object(focus)
    if bundle is None or bundle.get("total") is not None:
        return None
    return [True]


def no_search(env: Env, focus: Coll) -> Coll | None:
    """bdl-2 ``entry.search.empty() or (type = 'searchset')``."""
    bundle = _one_object(focus)
    if bundle is None:
        return None
    entries = bundle.get("entry")
    if entries is None:
        return [True]
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("search") is not None:
            return None
    return [True]


def not_a_document(env: Env, focus: Coll) -> Coll | None:
    """bdl-9, bdl-10, bdl-11 ``type = 'document' implies ...``: true of a Bundle of another type."""
    bundle = _one_object(focus)
    if bundle is None:
        return None
    bundle_type = bundle.get("type")
    if isinstance(bundle_type, str) and bundle_type != "document":
        return [True]
    return None


def has_resource_of_type(resource_type: str) -> FastPath:
    """``entry.resource.ofType(T).exists()``."""

    def fast(env: Env, focus: Coll) -> Coll | None:
        bundle = _one_object(focus)
        if bundle is None:
            return None
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return None
        found = False
        for entry in entries:
            if not isinstance(entry, dict):
                return None
            resource = entry.get("resource")
            if resource is None:
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") is None:
                return None
            found = found or resource.get("resourceType") == resource_type
        return [found]

    return fast


def distinct_full_urls(env: Env, focus: Coll) -> Coll | None:
    """bdl-7: unless a history, no two entries share fullUrl and resource.meta.versionId."""
    bundle = _one_object(focus)
    if bundle is None:
        return None
    bundle_type = bundle.get("type")
    if not isinstance(bundle_type, str):
        return None
    if bundle_type == "history":
        return [True]
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return None
    keys: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        url = entry.get("fullUrl")
        if url is None:
            continue
        if not isinstance(url, str):
            return None
        version = _version_id(entry.get("resource"))
        if version is None:
            return None
        keys.append(url + version)
    return [len(set(keys)) == len(keys)]


def _version_id(resource: Any) -> str | None:
    """``resource.meta.versionId`` as ``&`` joins it (absent: ''), None for an unusual shape."""
    if resource is None:
        return ""
    if not isinstance(resource, dict):
        return None
    meta = resource.get("meta")
    if meta is None:
        return ""
    if not isinstance(meta, dict):
        return None
    version = meta.get("versionId")
    if version is None:
        return ""
    return version if isinstance(version, str) else None


def identifier_or_name(env: Env, focus: Coll) -> Coll | None:
    """org-1 ``(identifier.count() + name.count()) > 0``."""
    org = _one_object(focus)
    if org is None:
        return None
    return [_count(org.get("identifier")) + _count(org.get("name")) > 0]


def identifier_with_system(systems: frozenset[str]) -> FastPath:
    """``identifier.where(system='a' or system='b' ...).exists()``."""

    def fast(env: Env, focus: Coll) -> Coll | None:
        owner = _one_object(focus)
        if owner is None:
            return None
        identifiers = owner.get("identifier")
        if identifiers is None:
            return [False]
        if not isinstance(identifiers, list):
            return None
        found = False
        for identifier in identifiers:
            if identifier is None:
                continue
            if not isinstance(identifier, dict):
                return None
            system = identifier.get("system")
            if system is None:
                continue
            if not isinstance(system, str):
                return None
            found = found or system in systems
        return [found]

    return fast


def one_patient_entry(env: Env, focus: Coll) -> Coll | None:
    """``entry.where(resource.is(Patient)).count() = 1`` (HospitalNotification, CareCommunication)."""
    bundle = _one_object(focus)
    if bundle is None:
        return None
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return None
    patients = 0
    for entry in entries:
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return None
        resource = entry.get("resource")
        if resource is None:
            continue
        if not isinstance(resource, dict) or resource.get("resourceType") is None:
            return None
        if resource.get("resourceType") == "Patient":
            patients += 1
    return [patients == 1]


_DK_ORGANIZATION_SYSTEMS = frozenset(
    {"urn:oid:1.2.208.176.1.1", "https://kombit.dk/sts/organisation", "urn:oid:2.16.840.1.113883.2.24.1.1"}
)

#: Expression text -> fast path. The texts are those of the shipped StructureDefinitions, verbatim.
FAST_PATHS: dict[str, FastPath] = {
    "contained.contained.empty()": no_contained,
    "contained.where((('#'+id in (%resource.descendants().reference"
    " | %resource.descendants().as(canonical) | %resource.descendants().as(uri)"
    " | %resource.descendants().as(url))) or descendants().where(reference = '#').exists()"
    " or descendants().where(as(canonical) = '#').exists()"
    " or descendants().where(as(canonical) = '#').exists()).not())"
    ".trace('unmatched', id).empty()": no_contained,
    "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()": no_contained,
    "contained.meta.security.empty()": no_contained,
    "text.`div`.exists()": narrative_div_exists,
    "resource.exists() or request.exists() or response.exists()": entry_has_content,
    "fullUrl.contains('/_history/').not()": full_url_without_history,
    "entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction'"
    " or %resource.type = 'history'))": entries_match_bundle_type(
        "request", frozenset({"batch", "transaction", "history"})
    ),
    "entry.all(response.exists() = (%resource.type = 'batch-response' or %resource.type ="
    " 'transaction-response' or %resource.type = 'history'))": entries_match_bundle_type(
        "response", frozenset({"batch-response", "transaction-response", "history"})
    ),
    "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId)"
    ".isDistinct()": distinct_full_urls,
    "total.empty() or (type = 'searchset') or (type = 'history')": no_total,
    "entry.search.empty() or (type = 'searchset')": no_search,
    "type = 'document' implies (identifier.system.exists() and identifier.value.exists())": not_a_document,
    "type = 'document' implies (timestamp.hasValue())": not_a_document,
    "type = 'document' implies entry.first().resource.is(Composition)": not_a_document,
    "entry.resource.ofType(Provenance).exists()": has_resource_of_type("Provenance"),
    "(identifier.count() + name.count()) > 0": identifier_or_name,
    "identifier.where(system='urn:oid:1.2.208.176.1.1' or system='https://kombit.dk/sts/organisation'"
    " or system='urn:oid:2.16.840.1.113883.2.24.1.1').exists()": identifier_with_system(
        _DK_ORGANIZATION_SYSTEMS
    ),
    "entry.where(resource.is(Patient)).count() = 1": one_patient_entry,
}


def with_fast_path(expression: str, general: Fn) -> Fn:
    """``general`` (the compiled expression) behind the expression's fast path, if it has one."""
    fast = FAST_PATHS.get(expression)
    if fast is None:
        return general

    def run(env: Env, focus: Coll) -> Coll:
        found = fast(env, focus)
        return general(env, focus) if found is None else found

    return run
