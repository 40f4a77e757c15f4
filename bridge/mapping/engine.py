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
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import orjson

from bridge.errors import MappingSpecError, UnmappableRecord
from bridge.fhir.outcome import Issue, Outcome
from bridge.mapping import paths, transforms
from bridge.mapping.conceptmap import ConceptMap, load_conceptmaps
from bridge.mapping.paths import MISSING, PathError
from bridge.mapping.spec import SpecFile, load_spec_dir

#: Namespace of the deterministic resource ids (UUID v5).
ID_NAMESPACE = uuid.UUID("5d0c3c3e-2b0c-5f55-9a53-6b0f3c1d2e7a")
ITEM_SOURCE_PREFIX = "urn:municipal-item:"
BUNDLE = "Bundle"


class _Ctx:
    """Per-run state: the namespace key, singleton ids, ids made so far, and the issues found."""

    __slots__ = ("ids", "issues", "muni", "singletons")

    def __init__(self, muni: str, singletons: dict[str, str]) -> None:
        self.muni = muni
        self.singletons = singletons
        self.issues: list[Issue] = []
        self.ids: dict[tuple[str, str], str] = {}

    def id(self, map_name: str, item_id: str) -> str:
        key = (map_name, item_id)
        made = self.ids.get(key)
        if made is None:
            made = self.ids[key] = resource_id(self.muni, map_name, item_id)
        return made

    def ref(self, map_name: str, item_id: str) -> str:
        return "urn:uuid:" + self.id(map_name, item_id)


_NAMESPACE_BYTES = ID_NAMESPACE.bytes


def resource_id(muni: str, map_name: str, item_id: str) -> str:
    """The deterministic id of the resource a map makes from an item: UUID v5 (RFC 4122), as uuid.uuid5."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{muni}/{map_name}/{item_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Forward rule: (item, root record, out node, ctx, location) -> None
Forward = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], _Ctx, str], None]
# Reverse rule: (FHIR node, out item, out root, resolver, location) -> None
Reverse = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], "_Resolver", str], None]


@dataclass(slots=True)
class CompiledMap:
    name: str
    resource_type: str
    profile: str | None
    order: int
    file: str
    source: str
    source_is_list: bool
    get_source: paths.Getter
    set_source: Callable[[dict[str, Any], Any], None]
    key: str
    get_key: paths.Getter
    key_from_root: bool
    set_key: paths.Setter | None
    where: list[tuple[paths.Getter, paths.Setter, Any]]
    match: list[tuple[paths.Getter, Any]]
    forward: list[Forward] = field(default_factory=list)
    reverse: list[Reverse] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)  # record paths read (for coverage and docs)
    writes: set[str] = field(default_factory=set)  # FHIR paths written

    def items(self, record: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        value = self.get_source(record)
        if value is MISSING or value is None:
            return
        if self.source_is_list:
            base = self.source[:-2]
            for i, item in enumerate(value):
                if self.selected(item):
                    yield f"{base}[{i}]", item
        elif self.selected(value):
            yield self.source, value

    def selected(self, item: Any) -> bool:
        for get, _, want in self.where:
            got = get(item)
            if want == "*":
                if got is MISSING or got is None:
                    return False
            elif got != want:
                return False
        return True

    def takes(self, resource: dict[str, Any]) -> bool:
        for get, want in self.match:
            got = get(resource)
            if got is MISSING or (want != "*" and got != want):
                return False
        return True


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


# ------------------------------------------------------------------------------------------ compiling
class _Compiler:
    def __init__(self, spec: SpecFile, conceptmaps: dict[str, ConceptMap], map_names: set[str]) -> None:
        self.spec = spec
        self.conceptmaps = conceptmaps
        self.map_names = map_names

    def fail(self, where: tuple[str | int, ...], problem: str) -> MappingSpecError:
        return MappingSpecError(self.spec.name, self.spec.where(where), problem)

    def steps(self, text: str, where: tuple[str | int, ...]) -> tuple[paths.Step, ...]:
        try:
            return paths.parse(text)
        except PathError as exc:
            raise self.fail(where, str(exc)) from exc

    def compile_map(self, index: int, data: dict[str, Any]) -> CompiledMap:
        at: tuple[str | int, ...] = ("maps", index)
        spec = self.spec.data
        source = data["source"]
        src_steps = self.steps(source, (*at, "source"))
        is_list = src_steps[-1].each
        if any(s.each for s in src_steps[:-1]):
            raise self.fail((*at, "source"), "only the last step of a map's source may be a list ([])")
        container = (*src_steps[:-1], paths.Step(src_steps[-1].name)) if is_list else src_steps
        key = data.get("key", "id")
        from_root = key.startswith("$.")
        key_steps = self.steps(key[2:] if from_root else key, (*at, "key"))
        where = []
        for wkey, want in (data.get("where") or {}).items():
            wsteps = self.steps(wkey, (*at, "where", wkey))
            where.append((paths.compile_getter(wsteps), paths.compile_setter(wsteps), want))
        match = [
            (paths.compile_getter(self.steps(mkey, (*at, "match", mkey))), want)
            for mkey, want in (data.get("match") or {}).items()
        ]
        cmap = CompiledMap(
            name=data["name"],
            resource_type=spec["resource"],
            profile=spec.get("profile"),
            order=int(spec.get("order", 100)),
            file=self.spec.name,
            source=source,
            source_is_list=is_list,
            get_source=paths.compile_getter(container),
            set_source=paths.compile_setter(container),
            key=key,
            get_key=paths.compile_getter(key_steps),
            key_from_root=from_root,
            set_key=None if from_root or not is_list else paths.compile_setter(key_steps),
            where=where,
            match=match,
        )
        for i, rule in enumerate(data["rules"]):
            fwd, rev = self.compile_rule(rule, (*at, "rules", i), cmap, "", "")
            if fwd is not None:
                cmap.forward.append(fwd)
            if rev is not None:
                cmap.reverse.append(rev)
        return cmap

    def compile_rule(
        self,
        rule: dict[str, Any],
        at: tuple[str | int, ...],
        cmap: CompiledMap,
        src_prefix: str,
        fhir_prefix: str,
    ) -> tuple[Forward | None, Reverse | None]:
        direction = rule.get("direction", "both")
        to_fhir = direction in ("both", "to-fhir")
        to_muni = direction in ("both", "to-municipal")
        kinds = [k for k in ("const", "ref", "rules") if k in rule]
        if len(kinds) > 1:
            raise self.fail(at, f"a rule has one of const, ref or rules, not {' and '.join(kinds)}")
        if "const" in rule and "source" in rule:
            raise self.fail(at, "a rule has const or source, not both")
        transform = None
        if "transform" in rule:
            transform = transforms.get(rule["transform"])
            if transform is None:
                known = ", ".join(sorted(transforms.REGISTRY))
                raise self.fail(
                    (*at, "transform"), f"unknown transform {rule['transform']!r} (known: {known})"
                )
            if transform.inverse is None and direction == "both":
                raise self.fail(
                    (*at, "transform"),
                    f"transform {transform.name!r} has no inverse: "
                    "use it with direction to-fhir or to-municipal",
                )
        conceptmap = None
        if "conceptmap" in rule:
            conceptmap = self.conceptmaps.get(rule["conceptmap"])
            if conceptmap is None:
                raise self.fail((*at, "conceptmap"), f"unknown ConceptMap id {rule['conceptmap']!r}")
        if "ref" in rule and rule["ref"] not in self.map_names:
            raise self.fail((*at, "ref"), f"ref names no map: {rule['ref']!r}")
        if "rules" in rule:
            return self.compile_group(rule, at, cmap, src_prefix, fhir_prefix, to_fhir, to_muni)
        if "fhir" not in rule:
            raise self.fail(at, "this rule needs a fhir path")
        fhir_steps = self.steps(rule["fhir"], (*at, "fhir"))
        cmap.writes.add(fhir_prefix + rule["fhir"])
        if "const" in rule:
            if any(s.each for s in fhir_steps):
                raise self.fail((*at, "fhir"), "a const rule cannot write through []")
            return (self.const_forward(fhir_steps, rule["const"]) if to_fhir else None), None
        if "ref" in rule:
            return self.ref_rule(rule, at, cmap, fhir_steps, src_prefix, to_fhir, to_muni)
        src_text = rule["source"]
        cmap.reads.add(src_prefix + src_text)
        src_steps = self.steps(src_text[2:] if src_text.startswith("$.") else src_text, (*at, "source"))
        if fhir_steps[-1].each != src_steps[-1].each:
            raise self.fail(at, "source and fhir must both end in [] or neither")
        return self.value_rule(
            src_text.startswith("$."), src_steps, fhir_steps, transform, conceptmap, direction, at
        )

    # --- rule kinds
    def const_forward(self, fhir_steps: tuple[paths.Step, ...], value: Any) -> Forward:
        setter = paths.compile_setter(fhir_steps)
        if isinstance(value, (dict, list)):
            frozen = orjson.dumps(value)

            def forward_copy(
                item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
            ) -> None:
                setter(out, orjson.loads(frozen))

            return forward_copy

        def forward(
            item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
        ) -> None:
            setter(out, value)

        return forward

    def value_rule(
        self,
        from_root: bool,
        src_steps: tuple[paths.Step, ...],
        fhir_steps: tuple[paths.Step, ...],
        transform: transforms.Transform | None,
        conceptmap: ConceptMap | None,
        direction: str,
        at: tuple[str | int, ...],
    ) -> tuple[Forward | None, Reverse | None]:
        each = src_steps[-1].each
        if each:
            src_steps = (*src_steps[:-1], paths.Step(src_steps[-1].name))
            fhir_steps = (*fhir_steps[:-1], paths.Step(fhir_steps[-1].name))
        try:
            get_src = paths.compile_getter(src_steps)
            set_src = paths.compile_setter(src_steps)
            get_fhir = paths.compile_getter(fhir_steps)
            set_fhir = paths.compile_setter(fhir_steps)
        except PathError as exc:
            raise self.fail(at, str(exc)) from exc
        src_text = paths.render(src_steps)
        fhir_text = paths.render(fhir_steps)

        fwd_fn = None
        rev_fn = None
        if transform is not None:
            if direction == "to-municipal":
                rev_fn = transform.forward
            else:
                fwd_fn = transform.forward
                rev_fn = transform.inverse

        def convert_forward(value: Any, ctx: _Ctx, loc: str) -> Any:
            try:
                if fwd_fn is not None:
                    value = fwd_fn(value)
            except transforms.TransformError as exc:
                ctx.issues.append(Issue("error", "value", str(exc), (f"{loc}.{src_text}",)))
                return MISSING
            if conceptmap is not None:
                mapped = conceptmap.to_fhir(str(value))
                if mapped is None:
                    ctx.issues.append(
                        Issue(
                            "error",
                            "code-invalid",
                            f"{value!r} has no translation in ConceptMap {conceptmap.id}",
                            (f"{loc}.{src_text}",),
                        )
                    )
                    return MISSING
                value = mapped
            return value

        def convert_reverse(value: Any, res: _Resolver, loc: str) -> Any:
            if conceptmap is not None:
                mapped = conceptmap.to_municipal(str(value))
                if mapped is None:
                    res.issues.append(
                        Issue(
                            "error",
                            "code-invalid",
                            f"{value!r} has no translation in ConceptMap {conceptmap.id}",
                            (f"{loc}.{fhir_text}",),
                        )
                    )
                    return MISSING
                value = mapped
            try:
                if rev_fn is not None:
                    value = rev_fn(value)
            except transforms.TransformError as exc:
                res.issues.append(Issue("error", "value", str(exc), (f"{loc}.{fhir_text}",)))
                return MISSING
            return value

        plain_forward = fwd_fn is None and conceptmap is None
        plain_reverse = rev_fn is None and conceptmap is None

        def forward(
            item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
        ) -> None:
            value = get_src(root if from_root else item)
            if value is MISSING or value is None:
                return
            if plain_forward:
                set_fhir(out, value)
            elif each:
                converted = [convert_forward(v, ctx, loc) for v in value]
                set_fhir(out, [v for v in converted if v is not MISSING])
            else:
                value = convert_forward(value, ctx, loc)
                if value is not MISSING:
                    set_fhir(out, value)

        def reverse(
            node: dict[str, Any], item: dict[str, Any], root: dict[str, Any], res: _Resolver, loc: str
        ) -> None:
            value = get_fhir(node)
            if value is MISSING or value is None:
                return
            if not plain_reverse:
                if each:
                    converted = [convert_reverse(v, res, loc) for v in value]
                    value = [v for v in converted if v is not MISSING]
                else:
                    value = convert_reverse(value, res, loc)
                    if value is MISSING:
                        return
            set_src(root if from_root else item, value)

        return (forward if direction != "to-municipal" else None), (
            reverse if direction != "to-fhir" else None
        )

    def ref_rule(
        self,
        rule: dict[str, Any],
        at: tuple[str | int, ...],
        cmap: CompiledMap,
        fhir_steps: tuple[paths.Step, ...],
        src_prefix: str,
        to_fhir: bool,
        to_muni: bool,
    ) -> tuple[Forward | None, Reverse | None]:
        target = rule["ref"]
        fhir_text = rule["fhir"]
        if "source" not in rule:
            # a reference to a single-object map (the citizen, the unit): nothing to carry back
            setter = paths.compile_setter(fhir_steps)

            def forward_single(
                item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
            ) -> None:
                key = ctx.singletons.get(target)
                if key is not None:
                    setter(out, {"reference": ctx.ref(target, key)})

            getter = paths.compile_getter(fhir_steps)

            def reverse_single(
                node: dict[str, Any], item: dict[str, Any], root: dict[str, Any], res: _Resolver, loc: str
            ) -> None:
                ref = getter(node)
                if ref is MISSING:
                    return
                found = res.resolve(ref.get("reference") if isinstance(ref, dict) else None)
                if found is None or found[0] != target:
                    res.issues.append(
                        Issue(
                            "error",
                            "not-found",
                            f"reference does not resolve to a {target} resource in the Bundle",
                            (f"{loc}.{fhir_text}",),
                        )
                    )

            return (forward_single if to_fhir else None), (reverse_single if to_muni else None)

        src_text = rule["source"]
        cmap.reads.add(src_prefix + src_text)
        from_root = src_text.startswith("$.")
        src_steps = self.steps(src_text[2:] if from_root else src_text, (*at, "source"))
        each = src_steps[-1].each
        if each != fhir_steps[-1].each:
            raise self.fail(at, "source and fhir must both end in [] or neither")
        if each:
            src_steps = (*src_steps[:-1], paths.Step(src_steps[-1].name))
            fhir_steps = (*fhir_steps[:-1], paths.Step(fhir_steps[-1].name))
        get_src = paths.compile_getter(src_steps)
        set_src = paths.compile_setter(src_steps)
        get_fhir = paths.compile_getter(fhir_steps)
        set_fhir = paths.compile_setter(fhir_steps)

        def forward(
            item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
        ) -> None:
            value = get_src(root if from_root else item)
            if value is MISSING or value is None:
                return
            if each:
                set_fhir(out, [{"reference": ctx.ref(target, str(v))} for v in value])
            else:
                set_fhir(out, {"reference": ctx.ref(target, str(value))})

        def back(ref: Any, res: _Resolver, where: str) -> str | None:
            found = res.resolve(ref.get("reference") if isinstance(ref, dict) else None)
            if found is None or found[0] != target:
                res.issues.append(
                    Issue(
                        "error",
                        "not-found",
                        f"reference does not resolve to a {target} resource in the Bundle",
                        (where,),
                    )
                )
                return None
            return found[1]

        def reverse(
            node: dict[str, Any], item: dict[str, Any], root: dict[str, Any], res: _Resolver, loc: str
        ) -> None:
            value = get_fhir(node)
            if value is MISSING or value is None:
                return
            if each:
                ids = [back(v, res, f"{loc}.{fhir_text[:-2]}[{i}]") for i, v in enumerate(value)]
                set_src(root if from_root else item, [i for i in ids if i is not None])
            else:
                one = back(value, res, f"{loc}.{fhir_text}")
                if one is not None:
                    set_src(root if from_root else item, one)

        return (forward if to_fhir else None), (reverse if to_muni else None)

    def compile_group(
        self,
        rule: dict[str, Any],
        at: tuple[str | int, ...],
        cmap: CompiledMap,
        src_prefix: str,
        fhir_prefix: str,
        to_fhir: bool,
        to_muni: bool,
    ) -> tuple[Forward | None, Reverse | None]:
        if "when" in rule:
            # a group: nested rules at the same level, applied when a record value is present
            when_text, _, when_value = _split_condition(rule["when"])
            when = paths.compile_getter(self.steps(when_text, (*at, "when")))
            children = [
                self.compile_rule(r, (*at, "rules", i), cmap, src_prefix, fhir_prefix)
                for i, r in enumerate(rule["rules"])
            ]
            fwds = [f for f, _ in children if f is not None]
            revs = [r for _, r in children if r is not None]

            def forward_when(
                item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
            ) -> None:
                value = when(item)
                if value is MISSING or value is None or (when_value and str(value) != when_value):
                    return
                for f in fwds:
                    f(item, root, out, ctx, loc)

            def reverse_when(
                node: dict[str, Any], item: dict[str, Any], root: dict[str, Any], res: _Resolver, loc: str
            ) -> None:
                for r in revs:
                    r(node, item, root, res, loc)

            return (forward_when if to_fhir else None), (reverse_when if to_muni else None)
        if "fhir" not in rule or "source" not in rule:
            raise self.fail(
                at, "a list rule needs fhir and source paths ending in [] (or use when for a group)"
            )
        fhir_steps = self.steps(rule["fhir"], (*at, "fhir"))
        from_root = rule["source"].startswith("$.")
        src_steps = self.steps(rule["source"][2:] if from_root else rule["source"], (*at, "source"))
        if not (fhir_steps[-1].each and src_steps[-1].each):
            raise self.fail(at, "a list rule's fhir and source paths both end in []")
        cmap.reads.add(src_prefix + rule["source"])
        children = [
            self.compile_rule(
                r,
                (*at, "rules", i),
                cmap,
                src_prefix + rule["source"] + ".",
                fhir_prefix + rule["fhir"] + ".",
            )
            for i, r in enumerate(rule["rules"])
        ]
        fwds = [f for f, _ in children if f is not None]
        revs = [r for _, r in children if r is not None]
        src_list = (*src_steps[:-1], paths.Step(src_steps[-1].name))
        fhir_list = (*fhir_steps[:-1], paths.Step(fhir_steps[-1].name))
        get_src = paths.compile_getter(src_list)
        set_src = paths.compile_setter(src_list)
        get_fhir = paths.compile_getter(fhir_list)
        set_fhir = paths.compile_setter(fhir_list)
        src_name = paths.render(src_list)
        fhir_name = paths.render(fhir_list)

        def forward(
            item: dict[str, Any], root: dict[str, Any], out: dict[str, Any], ctx: _Ctx, loc: str
        ) -> None:
            values = get_src(root if from_root else item)
            if values is MISSING or not values:
                return
            made = []
            for i, element in enumerate(values):
                node: dict[str, Any] = {}
                where = f"{loc}.{src_name}[{i}]"
                for f in fwds:
                    f(element, root, node, ctx, where)
                if node:
                    made.append(node)
            existing = get_fhir(out)
            if isinstance(existing, list):
                existing.extend(made)
            elif made:
                set_fhir(out, made)

        def reverse(
            node: dict[str, Any], item: dict[str, Any], root: dict[str, Any], res: _Resolver, loc: str
        ) -> None:
            values = get_fhir(node)
            if not isinstance(values, list) or not values:
                return
            made = []
            for i, element in enumerate(values):
                out: dict[str, Any] = {}
                where = f"{loc}.{fhir_name}[{i}]"
                for r in revs:
                    r(element, out, root, res, where)
                made.append(out)
            set_src(root if from_root else item, made)

        return (forward if to_fhir else None), (reverse if to_muni else None)


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
                    key = cmap.get_key(record if cmap.key_from_root else item)
                    if key is MISSING:
                        ctx.issues.append(Issue("error", "required", f"no item id at {cmap.key}", (loc,)))
                        continue
                    rid = ctx.id(cmap.name, str(key))
                    meta: dict[str, Any] = {"source": ITEM_SOURCE_PREFIX + quote(str(key), safe="")}
                    if cmap.profile:
                        meta["profile"] = [cmap.profile]
                    resource: dict[str, Any] = {"resourceType": cmap.resource_type, "id": rid, "meta": meta}
                    for rule in cmap.forward:
                        rule(item, record, resource, ctx, loc)
                    entries.append({"fullUrl": "urn:uuid:" + rid, "resource": resource})
        bundle: dict[str, Any] = {"resourceType": "Bundle"}
        for cmap in self.bundle_maps:
            for loc, item in cmap.items(record):
                key = cmap.get_key(record if cmap.key_from_root else item)
                bundle["id"] = resource_id(ctx.muni, cmap.name, str(key))
                if cmap.profile:
                    bundle["meta"] = {"profile": [cmap.profile]}
                for rule in cmap.forward:
                    rule(item, record, bundle, ctx, loc)
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
                        out[cmap.name] = str(key)
        return out

    # --- FHIR -> municipal
    def to_municipal(self, bundle: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
        """Map a Bundle back to a record dict (not yet validated) and the warnings of what was left behind.

        Raises UnmappableRecord when a resource cannot be translated (unknown code, broken reference).
        """
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
        res = _Resolver()
        warnings: list[Issue] = []
        assigned: list[tuple[int, dict[str, Any], CompiledMap, str]] = []
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
            key = _item_id(resource)
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
                res.by_url[full_url] = (cmap.name, key)
            if isinstance(resource.get("id"), str):
                res.by_url[f"{rtype}/{resource['id']}"] = (cmap.name, key)

        record: dict[str, Any] = {}
        placed: dict[str, dict[str, dict[str, Any]]] = {}
        for cmap in self.bundle_maps:
            item: dict[str, Any] = {}
            for rule in cmap.reverse:
                rule(bundle, item, record, res, "Bundle")
            if item:
                _merge(cmap.get_source(record), item, cmap, record)
        for i, resource, cmap, key in assigned:
            item = {}
            for _, set_where, want in cmap.where:
                if want != "*":
                    set_where(item, want)
            if cmap.set_key is not None:
                cmap.set_key(item, key)
            for rule in cmap.reverse:
                rule(resource, item, record, res, f"Bundle.entry[{i}].resource")
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
            else:
                _merge(cmap.get_source(record), item, cmap, record)
        if res.issues:
            raise UnmappableRecord(Outcome(res.issues))
        return record, Outcome(warnings)

    def left_behind(self, bundle: dict[str, Any], record: dict[str, Any]) -> list[Issue]:
        """Input elements that the record could not hold: map the record forward again and compare."""
        try:
            again = self.to_fhir(record)
        except UnmappableRecord:
            return []
        regenerated: dict[tuple[str, str], dict[str, Any]] = {}
        forward_refs: dict[str, tuple[str, str]] = {}
        for entry in again["entry"]:
            resource = entry["resource"]
            key = _item_id(resource)
            cmap = next(
                (m for m in self.by_type.get(resource["resourceType"], ()) if m.takes(resource)), None
            )
            if cmap is not None and key is not None:
                regenerated[(cmap.name, key)] = resource
                forward_refs[entry["fullUrl"]] = (cmap.name, key)
        input_refs: dict[str, tuple[str, str]] = {}
        pairs: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for i, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            cmap = next(
                (m for m in self.by_type.get(str(resource.get("resourceType")), ()) if m.takes(resource)),
                None,
            )
            key = _item_id(resource)
            if cmap is None or key is None:
                continue
            ident = (cmap.name, key)
            if isinstance(entry.get("fullUrl"), str):
                input_refs[entry["fullUrl"]] = ident
            input_refs[f"{resource.get('resourceType')}/{resource.get('id')}"] = ident
            other = regenerated.get(ident)
            if other is not None:
                pairs.append((i, resource, other))
        issues: list[Issue] = []
        for i, original, other in pairs:
            if orjson.dumps(original) == orjson.dumps(other):
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


def _split_condition(text: str) -> tuple[str, str, str]:
    """'path=value' (outside brackets) -> (path, '=', value); a bare path -> (path, '', '')."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "=" and depth == 0:
            return text[:i], "=", text[i + 1 :]
    return text, "", ""


def _merge(current: Any, item: dict[str, Any], cmap: CompiledMap, record: dict[str, Any]) -> None:
    if isinstance(current, dict):
        current.update(item)
    else:
        cmap.set_source(record, item)


def _item_id(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        source = meta.get("source")
        if isinstance(source, str) and source.startswith(ITEM_SOURCE_PREFIX):
            return unquote(source[len(ITEM_SOURCE_PREFIX) :])
    rid = resource.get("id")
    return rid if isinstance(rid, str) else None


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
        compiler = _Compiler(spec, conceptmaps, set(names))
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
