"""The mapping engine: specs compiled once into callables that run both directions.

Municipal -> FHIR: each map turns the items at its ``source`` into resources of its type, in spec
order, into a Bundle of type ``collection``. Resource ids are UUID v5 of (municipality code, map name,
item id), so the same record always yields the same ids; ``fullUrl`` is ``urn:uuid:<id>``; every
resource carries ``meta.source = urn:municipal-item:<item id>`` so the way back finds the item id.

FHIR -> municipal: each resource is taken by the first map of its type whose ``match`` holds, its rules
run backwards, and the items are placed at the map's ``source``. Then the record is mapped forward again
and compared with the input: every input element the record could not hold is reported as an
``OperationOutcome`` warning with its path, so nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import MappingSpecError, UnmappableRecord
from bridge.fhir.outcome import Issue, Outcome
from bridge.mapping import paths
from bridge.mapping.compiler import CompiledMap, MapCompiler
from bridge.mapping.conceptmap import ConceptMap, load_conceptmaps
from bridge.mapping.ids import item_id, resource_id
from bridge.mapping.paths import MISSING, PathError
from bridge.mapping.spec import SpecFile, load_spec_dir

BUNDLE = "Bundle"


class _Ctx:
    """Per-run state: the namespace key, singleton ids, ids made so far, and the issues found."""

    __slots__ = ("ids", "issues", "muni", "singleton_refs", "singletons")

    def __init__(self, muni: str, singletons: dict[str, str]) -> None:
        self.muni = muni
        self.singletons = singletons
        self.issues: list[Issue] = []
        self.ids: dict[tuple[str, str], str] = {}
        self.singleton_refs = {name: self.ref(name, key) for name, key in singletons.items()}

    def id(self, map_name: str, item_id: str) -> str:
        key = (map_name, item_id)
        made = self.ids.get(key)
        if made is None:
            made = self.ids[key] = resource_id(self.muni, map_name, item_id)
        return made

    def ref(self, map_name: str, item_id: str) -> str:
        return "urn:uuid:" + self.id(map_name, item_id)


class _Resolver:
    """FHIR -> municipal: resolves references inside the Bundle to (map name, item id)."""

    __slots__ = ("by_url", "issues")

    def __init__(self) -> None:
        self.by_url: dict[str, tuple[str, str]] = {}
        self.issues: list[Issue] = []

    def resolve(self, reference: Any) -> tuple[str, str] | None:
        if not isinstance(reference, str):
            return None
        return self.by_url.get(reference)


_Assigned = tuple[int, dict[str, Any], CompiledMap, str]  # entry index, resource, its map, item id
_Traced = tuple[tuple[str, str], str, dict[str, Any], str]  # (map name, item id), fullUrl, resource, scope


@dataclass(slots=True)
class BundleReading:
    """What FHIR -> municipal made of a Bundle: the record dict and how the entries were taken."""

    record: dict[str, Any]
    warnings: list[Issue]
    resolver: _Resolver
    assigned: list[_Assigned]


# ------------------------------------------------------------------------------------------ the engine
@dataclass(slots=True)
class MappingSet:
    """A compiled set of mapping specs and ConceptMaps: ``to_fhir`` and ``to_municipal``."""

    maps: list[CompiledMap]
    conceptmaps: dict[str, ConceptMap]
    bundle_maps: list[CompiledMap]
    by_type: dict[str, list[CompiledMap]]
    by_name: dict[str, CompiledMap]
    namespace_key: paths.Getter
    files: list[str]
    groups: list[list[CompiledMap]] = field(default_factory=list)  # maps by shared source, in Bundle order

    # --- municipal -> FHIR
    def to_fhir(self, record: dict[str, Any]) -> dict[str, Any]:
        """Map a record (JSON-mode dict of a validated MunicipalRecord) to a collection Bundle."""
        return self._forward(record, None)

    def _forward(self, record: dict[str, Any], trace: list[_Traced] | None) -> dict[str, Any]:
        muni = self.namespace_key(record)
        if muni is MISSING:
            raise UnmappableRecord(
                [Issue("error", "required", "the record has no value at the id namespace path")]
            )
        ctx = _Ctx(str(muni), self._singletons(record))
        entries: list[dict[str, Any]] = []
        for group in self.groups:
            # maps that share a source run item by item, so the way back rebuilds the list in its order
            first = group[0]
            value = first.get_source(record)
            if value is MISSING or value is None:
                continue
            if first.source_is_list:
                base = first.source[:-2]
                located = [(f"{base}[{i}]", item) for i, item in enumerate(value)]
            else:
                located = [(first.source, value)]
            for loc, item in located:
                for cmap in group:
                    if cmap.where and not cmap.selected(item):
                        continue
                    made = cmap.make(item, record, ctx, loc) if cmap.make is not None else None
                    if made is None:
                        continue
                    key, rid, resource = made
                    url = "urn:uuid:" + rid
                    entries.append({"fullUrl": url, "resource": resource})
                    if trace is not None:
                        trace.append(((cmap.name, key), url, resource, cmap.scope))
        bundle: dict[str, Any] = {"resourceType": "Bundle"}
        for cmap in self.bundle_maps:
            for loc, item in cmap.items(record):
                key = cmap.get_key(record if cmap.key_from_root else item)
                bundle["id"] = resource_id(ctx.muni, cmap.name, str(key))
                if cmap.profile:
                    bundle["meta"] = {"profile": [cmap.profile]}
                if cmap.forward is not None:
                    cmap.forward(item, record, bundle, ctx, loc)
        bundle["type"] = "collection"
        bundle["entry"] = entries
        if ctx.issues:
            raise UnmappableRecord(Outcome(ctx.issues))
        return bundle

    def _singletons(self, record: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for cmap in self.maps:
            if not cmap.source_is_list:
                for _, item in cmap.items(record):
                    key = cmap.get_key(record if cmap.key_from_root else item)
                    if key is not MISSING:
                        out[cmap.scope] = str(key)
        return out

    # --- FHIR -> municipal
    def to_municipal(self, bundle: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
        """Map a Bundle back to a record dict (not yet validated) and the warnings of resources no map takes.

        Raises UnmappableRecord when a resource cannot be translated (unknown code, broken reference).
        """
        reading = self.read_bundle(bundle)
        return reading.record, Outcome(reading.warnings)

    def read_bundle(self, bundle: dict[str, Any]) -> BundleReading:
        """``to_municipal``, keeping what ``left_behind`` needs to know about the input."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise UnmappableRecord([Issue("error", "structure", "expected a FHIR Bundle", ("Bundle",))])
        if bundle.get("type") not in ("collection", "transaction", "batch", "searchset", "document"):
            raise UnmappableRecord(
                [
                    Issue(
                        "error",
                        "value",
                        "Bundle.type must be collection, transaction or batch",
                        ("Bundle.type",),
                    )
                ]
            )
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise UnmappableRecord(
                [Issue("error", "structure", "Bundle.entry must be a list", ("Bundle.entry",))]
            )
        res, assigned, warnings = self._assign(entries)
        record: dict[str, Any] = {}
        placed: dict[str, dict[str, dict[str, Any]]] = {}
        for cmap in self.bundle_maps:
            item: dict[str, Any] = {}
            if cmap.reverse is not None:
                cmap.reverse(bundle, item, record, res, "Bundle")
            if item:
                _merge(cmap.get_source(record), item, cmap, record)
        by_identity: dict[tuple[str, str], dict[str, Any]] = {}
        attached: list[tuple[int, dict[str, Any], CompiledMap, str]] = []
        for i, resource, cmap, key in assigned:
            if cmap.attach is not None:
                attached.append((i, resource, cmap, key))  # after the items they attach to exist
                continue
            item = {}
            for _, set_where, want in cmap.where:
                if want != "*":
                    set_where(item, want)
            if cmap.set_key is not None:
                cmap.set_key(item, key)
            if cmap.reverse is not None:
                cmap.reverse(resource, item, record, res, f"Bundle.entry[{i}].resource")
            if cmap.source_is_list:
                bucket = placed.setdefault(cmap.source, {})
                if key in bucket:
                    bucket[key].update(item)
                else:
                    bucket[key] = item
                    current = cmap.get_source(record)
                    if current is MISSING:
                        current = []
                        cmap.set_source(record, current)
                    current.append(item)
                by_identity[(cmap.scope, key)] = bucket[key]
            else:
                _merge(cmap.get_source(record), item, cmap, record)
        for i, resource, cmap, _key in attached:
            assert cmap.attach is not None
            where = f"Bundle.entry[{i}].resource"
            ref = cmap.attach(resource)
            target = res.resolve(ref.get("reference") if isinstance(ref, dict) else None)
            host = by_identity.get(target) if target is not None else None
            if host is None:
                res.issues.append(
                    Issue(
                        "error",
                        "not-found",
                        "the resource it belongs to is not in the Bundle",
                        (f"{where}.{cmap.attach_path}",),
                    )
                )
                continue
            item = {}
            if cmap.reverse is not None:
                cmap.reverse(resource, item, record, res, where)
            host.update(item)
        if res.issues:
            raise UnmappableRecord(Outcome(res.issues))
        return BundleReading(record, warnings, res, assigned)

    def _assign(self, entries: list[Any]) -> tuple[_Resolver, list[_Assigned], list[Issue]]:
        """Give each entry's resource to the map that takes it; index fullUrls and Type/id for references."""
        res = _Resolver()
        warnings: list[Issue] = []
        assigned: list[_Assigned] = []
        for i, entry in enumerate(entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                res.issues.append(
                    Issue("error", "structure", "entry without a resource", (f"Bundle.entry[{i}]",))
                )
                continue
            rtype = resource.get("resourceType")
            cmap = next((m for m in self.by_type.get(str(rtype), ()) if m.takes(resource)), None)
            if cmap is None:
                warnings.append(
                    Issue(
                        "warning",
                        "not-supported",
                        f"no mapping takes this {rtype} resource; it is not kept in the municipal record",
                        (f"Bundle.entry[{i}].resource",),
                    )
                )
                continue
            key = item_id(resource)
            if key is None:
                res.issues.append(
                    Issue(
                        "error",
                        "required",
                        "resource without id or meta.source",
                        (f"Bundle.entry[{i}].resource",),
                    )
                )
                continue
            assigned.append((i, resource, cmap, key))
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str):
                res.by_url[full_url] = (cmap.scope, key)
            if isinstance(resource.get("id"), str):
                res.by_url[f"{rtype}/{resource['id']}"] = (cmap.scope, key)

        return res, assigned, warnings

    def left_behind(
        self, bundle: dict[str, Any], record: dict[str, Any], reading: BundleReading | None = None
    ) -> list[Issue]:
        """Input elements that the record could not hold: map the record forward again and compare.

        ``reading`` (from ``read_bundle`` of the same Bundle) saves indexing the input a second time.
        """
        trace: list[_Traced] = []
        try:
            again = self._forward(record, trace)
        except UnmappableRecord:
            return []
        regenerated = {(scope, ident[1]): resource for ident, _, resource, scope in trace}
        forward_refs = {url: (scope, ident[1]) for ident, url, _, scope in trace}
        if reading is None:
            entries = bundle.get("entry") or []
            res, assigned, _ = self._assign(entries if isinstance(entries, list) else [])
        else:
            res, assigned = reading.resolver, reading.assigned
        input_refs = res.by_url
        pairs: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for i, resource, cmap, key in assigned:
            other = regenerated.get((cmap.scope, key))
            if other is not None:
                pairs.append((i, resource, other))
        issues: list[Issue] = []
        for i, original, other in pairs:
            if original == other:
                continue
            found: list[str] = []
            _diff(original, other, "", found, input_refs, forward_refs, top=True)
            for where in found:
                issues.append(
                    Issue(
                        "warning",
                        "informational",
                        "not kept: the municipal record has no place for this element",
                        (f"Bundle.entry[{i}].resource{where}",),
                    )
                )
        bundle_extra: list[str] = []
        bundle_again = {k: v for k, v in again.items() if k != "entry"}
        _diff(
            {k: v for k, v in bundle.items() if k != "entry"},
            bundle_again,
            "",
            bundle_extra,
            {},
            {},
            top=True,
        )
        issues.extend(
            Issue(
                "warning",
                "informational",
                "not kept: the municipal record has no place for this element",
                (f"Bundle{w}",),
            )
            for w in bundle_extra
        )
        return issues


def _merge(current: Any, item: dict[str, Any], cmap: CompiledMap, record: dict[str, Any]) -> None:
    if isinstance(current, dict):
        current.update(item)
    else:
        cmap.set_source(record, item)


_SKIP_TOP = frozenset({"id", "meta"})


def _same_instant(a: str, b: str) -> bool:
    try:
        return dt.datetime.fromisoformat(a) == dt.datetime.fromisoformat(b)
    except ValueError:
        return False


def _diff(
    original: Any,
    other: Any,
    path: str,
    out: list[str],
    input_refs: dict[str, tuple[str, str]],
    forward_refs: dict[str, tuple[str, str]],
    *,
    top: bool = False,
) -> None:
    if isinstance(original, dict):
        if not isinstance(other, dict):
            out.append(path)
            return
        for key, value in original.items():
            if top and key in _SKIP_TOP:
                continue
            sub = f"{path}.{key}"
            theirs = other.get(key, MISSING)
            if key == "reference" and isinstance(value, str) and isinstance(theirs, str):
                if value == theirs:
                    continue
                mine = input_refs.get(value)
                if mine is None or mine != forward_refs.get(theirs):
                    out.append(sub)
                continue
            if theirs is MISSING:
                out.append(sub)
                continue
            _diff(value, theirs, sub, out, input_refs, forward_refs)
    elif isinstance(original, list):
        if not isinstance(other, list):
            out.append(path)
            return
        for i, value in enumerate(original):
            if i >= len(other):
                out.append(f"{path}[{i}]")
            else:
                _diff(value, other[i], f"{path}[{i}]", out, input_refs, forward_refs)
    elif original != other and not (
        isinstance(original, str) and isinstance(other, str) and _same_instant(original, other)
    ):
        out.append(path)


def compile_specs(specs: list[SpecFile], conceptmaps: dict[str, ConceptMap]) -> MappingSet:
    """Compile loaded specs into a MappingSet; a broken spec raises MappingSpecError."""
    names: dict[str, str] = {}
    scopes = {m.get("scope", m["name"]) for spec in specs for m in spec.data["maps"]}
    for spec in specs:
        for i, m in enumerate(spec.data["maps"]):
            if m["name"] in names:
                raise MappingSpecError(
                    spec.name,
                    spec.where(("maps", i, "name")),
                    f"map name {m['name']!r} is also used in {names[m['name']]}",
                )
            names[m["name"]] = spec.name
    compiled: list[CompiledMap] = []
    for spec in specs:
        compiler = MapCompiler(spec, conceptmaps, scopes)
        for i, m in enumerate(spec.data["maps"]):
            compiled.append(compiler.compile_map(i, m))
    compiled.sort(key=lambda m: (m.order, m.file))
    bundle_maps = [m for m in compiled if m.resource_type == BUNDLE]
    maps = [m for m in compiled if m.resource_type != BUNDLE]
    by_type: dict[str, list[CompiledMap]] = {}
    for m in maps:
        by_type.setdefault(m.resource_type, []).append(m)
    for rtype, group in by_type.items():
        for m in group[:-1]:
            if not m.match:
                raise MappingSpecError(
                    m.file,
                    m.name,
                    f"several maps make {rtype}; each but the last needs a match to tell them apart",
                )
    groups: dict[str, list[CompiledMap]] = {}
    for m in maps:
        groups.setdefault(m.source, []).append(m)
    return MappingSet(
        groups=list(groups.values()),
        maps=maps,
        conceptmaps=conceptmaps,
        bundle_maps=bundle_maps,
        by_type=by_type,
        by_name={m.name: m for m in compiled},
        namespace_key=_namespace(specs),
        files=[s.name for s in specs],
    )


def _namespace(specs: list[SpecFile]) -> paths.Getter:
    declared = [(s, s.data["namespace"]) for s in specs if "namespace" in s.data]
    if len(declared) != 1:
        names = ", ".join(s.name for s, _ in declared) or "none"
        raise MappingSpecError(
            "mappings",
            "namespace",
            f"exactly one spec declares the id namespace (record path); found: {names}",
        )
    spec, text = declared[0]
    try:
        return paths.compile_getter(paths.parse(text))
    except PathError as exc:
        raise MappingSpecError(spec.name, spec.where(("namespace",)), str(exc)) from exc


def load_mapping_set(directory: Path) -> MappingSet:
    """Load, check and compile every spec and ConceptMap under ``directory``."""
    conceptmaps = load_conceptmaps(directory / "conceptmaps")
    return compile_specs(load_spec_dir(directory), conceptmaps)
