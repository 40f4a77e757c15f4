"""Compiling mapping specs: each map becomes two generated Python functions, one per direction.

The compiler checks every rule against the spec language (paths, transforms, ConceptMaps, refs) and
reports a broken spec with its file, line and key. It then writes straight-line Python for the map -
field look-ups, container creation, code translation - and compiles it once, so a record costs a few
dictionary operations per element rather than an interpreter walking the spec.

Generated functions::

    forward(item, root, out, ctx, loc)   # municipal item -> FHIR resource ``out``
    reverse(node, item, root, res, loc)  # FHIR resource ``node`` -> municipal ``item``

``ctx`` offers ``ref(map, item_id)``, ``singletons`` and ``issues``; ``res`` offers ``by_url`` and
``issues`` (see ``bridge.mapping.engine``). ``loc`` is the item's path, used only in error messages.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import MappingSpecError
from bridge.fhir.outcome import Issue
from bridge.mapping import paths, transforms
from bridge.mapping.conceptmap import ConceptMap
from bridge.mapping.ids import item_source
from bridge.mapping.paths import MISSING, PathError, Step
from bridge.mapping.spec import SpecFile

Forward = Callable[[Any, dict[str, Any], dict[str, Any], Any, str], None]
Reverse = Callable[[Any, dict[str, Any], dict[str, Any], Any, str], None]
#: make(item, root, ctx, loc) -> (item id, resource id, resource), or None (an issue was recorded)
Make = Callable[[Any, dict[str, Any], Any, str], "tuple[str, str, dict[str, Any]] | None"]


@dataclass(slots=True)
class CompiledMap:
    """One map of a spec, ready to run."""

    name: str
    resource_type: str
    profile: str | None
    order: int
    file: str
    source: str
    scope: str  # ids and references: maps sharing a scope share an id space (default: the name)
    source_is_list: bool
    get_source: paths.Getter
    set_source: paths.Setter
    key: str
    get_key: paths.Getter
    key_from_root: bool
    set_key: paths.Setter | None
    where: list[tuple[paths.Getter, paths.Setter, Any]]
    match: list[tuple[paths.Getter, Any]]
    where_keys: tuple[str, ...] = ()  # the record fields ``where`` reads
    attach: paths.Getter | None = None  # FHIR -> municipal: merge into the item this Reference points at
    attach_path: str = ""
    forward: Forward | None = None
    reverse: Reverse | None = None
    make: Make | None = None  # the whole resource: id, meta and the forward rules
    code: str = ""  # the generated source, for reading and debugging
    reads: set[str] = field(default_factory=set)  # record paths read (coverage, documentation)
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


def split_condition(text: str) -> tuple[str, str]:
    """'path=value' (the '=' outside brackets) -> (path, value); a bare path -> (path, '')."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "=" and depth == 0:
            return text[:i], text[i + 1 :]
    return text, ""


# ------------------------------------------------------------------------------------------ runtime helpers
def _select(node: dict[str, Any], name: str, key: tuple[str, ...], values: tuple[str, ...]) -> dict[str, Any]:
    """Write side of ``name[key=value]``: the matching element, created when missing."""
    items = node.get(name)
    if items.__class__ is not list:
        items = node[name] = []
    assert isinstance(items, list)
    for element in items:
        probe: Any = element
        for k in key:
            probe = probe.get(k, MISSING) if probe.__class__ is dict else MISSING
        if probe in values:
            found: dict[str, Any] = element
            return found
    made: dict[str, Any] = {}
    inner = made
    for k in key[:-1]:
        inner = inner.setdefault(k, {})
    inner[key[-1]] = values[0]
    items.append(made)
    return made


def _find(items: Any, key: tuple[str, ...], values: tuple[str, ...]) -> Any:
    """Read side of ``name[key=value]``."""
    if items.__class__ is not list:
        return MISSING
    for element in items:
        probe: Any = element
        for k in key:
            probe = probe.get(k, MISSING) if probe.__class__ is dict else MISSING
        if probe in values:
            return element
    return MISSING


def _resolve(res: Any, ref: Any) -> tuple[str, str] | None:
    """The (scope, item id) a Reference points at inside the Bundle; None for anything else."""
    value = ref.get("reference") if ref.__class__ is dict else None
    found: tuple[str, str] | None = res.by_url.get(value) if value.__class__ is str else None
    return found


def _error(issues: list[Issue], code: Any, diagnostics: str, where: str) -> None:
    issues.append(Issue("error", code, diagnostics, (where,)))


# ------------------------------------------------------------------------------------------ code writing
class _Code:
    """Indented source lines, and the constants they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}
        self._ids = itertools.count()

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def const(self, value: Any, prefix: str = "k") -> str:
        name = f"_{prefix}{next(self._ids)}"
        self.names[name] = value
        return name

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"


def _emit_get(
    code: _Code, depth: int, target: str, start: str, steps: tuple[Step, ...], *, trusted: bool
) -> None:
    """``target`` = the value at ``steps`` below ``start``, or MISSING.

    ``trusted``: ``start`` is known to be a dict (a validated record item, or a resource the engine
    checked), so the first look-up needs no type test.
    """
    first = True
    code.line(depth, f"{target} = {start}")
    for step in steps:
        if first and trusted:
            code.line(depth, f"{target} = {target}.get({step.name!r}, MISSING)")
        else:
            code.line(
                depth,
                f"{target} = {target}.get({step.name!r}, MISSING) if {target}.__class__ is dict else MISSING",
            )
        first = False
        if step.index is not None:
            i = step.index
            code.line(
                depth,
                f"{target} = {target}[{i}] if {target}.__class__ is list and len({target}) > {i} "
                "else MISSING",
            )
        elif step.key is not None:
            code.line(depth, f"{target} = _find({target}, {step.key!r}, {step.values!r})")


def _emit_set(code: _Code, depth: int, start: str, steps: tuple[Step, ...], value: str) -> None:
    """Write ``value`` at ``steps`` below ``start``, creating containers on the way."""
    node = code.fresh("n")
    code.line(depth, f"{node} = {start}")
    for step in steps[:-1]:
        if step.key is not None:
            code.line(depth, f"{node} = _select({node}, {step.name!r}, {step.key!r}, {step.values!r})")
            continue
        child = code.fresh("c")
        if step.index is None:
            code.line(depth, f"{child} = {node}.get({step.name!r})")
            code.line(depth, f"if {child}.__class__ is not dict:")
            code.line(depth + 1, f"{child} = {node}[{step.name!r}] = {{}}")
            code.line(depth, f"{node} = {child}")
        else:
            code.line(depth, f"{child} = {node}.get({step.name!r})")
            code.line(depth, f"if {child}.__class__ is not list:")
            code.line(depth + 1, f"{child} = {node}[{step.name!r}] = []")
            if step.index == 0:
                code.line(depth, f"if not {child}:")
            else:
                code.line(depth, f"while len({child}) <= {step.index}:")
            code.line(depth + 1, f"{child}.append({{}})")
            code.line(depth, f"{node} = {child}[{step.index}]")
    last = steps[-1]
    if last.index is None:
        code.line(depth, f"{node}[{last.name!r}] = {value}")
        return
    child = code.fresh("c")
    code.line(depth, f"{child} = {node}.get({last.name!r})")
    code.line(depth, f"if {child}.__class__ is not list:")
    code.line(depth + 1, f"{child} = {node}[{last.name!r}] = []")
    if last.index == 0:
        code.line(depth, f"if not {child}:")
    else:
        code.line(depth, f"while len({child}) <= {last.index}:")
    code.line(depth + 1, f"{child}.append(None)")
    code.line(depth, f"{child}[{last.index}] = {value}")


def _plain(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The same path with a trailing ``[]`` turned into the list itself."""
    return (*steps[:-1], Step(steps[-1].name)) if steps and steps[-1].each else steps


@dataclass(slots=True)
class _Rule:
    """A checked rule, ready for code generation in either direction."""

    kind: str  # const | value | ref | when | list
    at: tuple[str | int, ...]
    to_fhir: bool
    to_muni: bool
    fhir: tuple[Step, ...] = ()
    fhir_text: str = ""
    source: tuple[Step, ...] = ()
    source_text: str = ""
    from_root: bool = False
    each: bool = False
    const: Any = None
    ref: str = ""
    transform: transforms.Transform | None = None
    conceptmap: ConceptMap | None = None
    when: tuple[Step, ...] = ()
    when_value: str = ""
    children: list[_Rule] = field(default_factory=list)


class MapCompiler:
    """Checks one spec's maps and generates their functions."""

    def __init__(self, spec: SpecFile, conceptmaps: dict[str, ConceptMap], scopes: set[str]) -> None:
        self.spec = spec
        self.conceptmaps = conceptmaps
        self.scopes = scopes

    def fail(self, where: tuple[str | int, ...], problem: str) -> MappingSpecError:
        return MappingSpecError(self.spec.name, self.spec.where(where), problem)

    def steps(self, text: str, where: tuple[str | int, ...]) -> tuple[Step, ...]:
        try:
            return paths.parse(text)
        except PathError as exc:
            raise self.fail(where, str(exc)) from exc

    # --- checking
    def compile_map(self, index: int, data: dict[str, Any]) -> CompiledMap:
        at: tuple[str | int, ...] = ("maps", index)
        spec = self.spec.data
        source = data["source"]
        src_steps = self.steps(source, (*at, "source"))
        if any(s.each for s in src_steps[:-1]):
            raise self.fail((*at, "source"), "only the last step of a map's source may be a list ([])")
        is_list = src_steps[-1].each
        container = _plain(src_steps)
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
            scope=data.get("scope", data["name"]),
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
            where_keys=tuple(data.get("where") or ()),
        )
        if "attach" in data:
            cmap.attach = paths.compile_getter(self.steps(data["attach"], (*at, "attach")))
            cmap.attach_path = data["attach"]
        rules = [self.check_rule(r, (*at, "rules", i), cmap, "", "") for i, r in enumerate(data["rules"])]
        self.generate(cmap, rules, key_steps)
        return cmap

    def check_rule(
        self,
        rule: dict[str, Any],
        at: tuple[str | int, ...],
        cmap: CompiledMap,
        src_prefix: str,
        fhir_prefix: str,
    ) -> _Rule:
        direction = rule.get("direction", "both")
        out = _Rule(
            kind="",
            at=at,
            to_fhir=direction in ("both", "to-fhir"),
            to_muni=direction in ("both", "to-municipal"),
        )
        kinds = [k for k in ("const", "ref", "rules") if k in rule]
        if len(kinds) > 1:
            raise self.fail(at, f"a rule has one of const, ref or rules, not {' and '.join(kinds)}")
        if "const" in rule and "source" in rule:
            raise self.fail(at, "a rule has const or source, not both")
        if "transform" in rule:
            try:
                out.transform = transforms.get(rule["transform"])
            except ValueError as exc:
                raise self.fail((*at, "transform"), str(exc)) from exc
            if out.transform is None:
                known = ", ".join(
                    sorted([*transforms.REGISTRY, *(f + "(...)" for f in transforms.FACTORIES)])
                )
                raise self.fail(
                    (*at, "transform"), f"unknown transform {rule['transform']!r} (known: {known})"
                )
            if out.transform.inverse is None and direction == "both":
                raise self.fail(
                    (*at, "transform"),
                    f"transform {out.transform.name!r} has no inverse: "
                    "use it with direction to-fhir or to-municipal",
                )
        if "conceptmap" in rule:
            out.conceptmap = self.conceptmaps.get(rule["conceptmap"])
            if out.conceptmap is None:
                raise self.fail((*at, "conceptmap"), f"unknown ConceptMap id {rule['conceptmap']!r}")
        if "ref" in rule and rule["ref"] not in self.scopes:
            raise self.fail((*at, "ref"), f"ref names no map (or scope): {rule['ref']!r}")
        if "source" in rule:
            text = rule["source"]
            out.from_root = text.startswith("$.")
            out.source = self.steps(text[2:] if out.from_root else text, (*at, "source"))
            out.source_text = text
            cmap.reads.add(src_prefix + text)
        if "fhir" in rule:
            out.fhir = self.steps(rule["fhir"], (*at, "fhir"))
            out.fhir_text = rule["fhir"]
            cmap.writes.add(fhir_prefix + rule["fhir"])
        if "rules" in rule:
            if "when" in rule:
                out.kind = "when"
                text, out.when_value = split_condition(rule["when"])
                out.when = self.steps(text, (*at, "when"))
                prefixes = (src_prefix, fhir_prefix)
            else:
                out.kind = "list"
                if not (out.fhir and out.source and out.fhir[-1].each and out.source[-1].each):
                    raise self.fail(
                        at, "a list rule's fhir and source paths both end in [] (or use when for a group)"
                    )
                prefixes = (src_prefix + rule["source"] + ".", fhir_prefix + rule["fhir"] + ".")
            out.children = [
                self.check_rule(r, (*at, "rules", i), cmap, *prefixes) for i, r in enumerate(rule["rules"])
            ]
            return out
        if not out.fhir:
            raise self.fail(at, "this rule needs a fhir path")
        if "const" in rule:
            if any(s.each for s in out.fhir) or out.fhir[-1].key is not None:
                raise self.fail(
                    (*at, "fhir"),
                    "a const rule writes to a field or a position, not through [] or a selector",
                )
            out.kind, out.const = "const", rule["const"]
            return out
        if out.fhir[-1].key is not None:
            raise self.fail((*at, "fhir"), "a path cannot end in a selector")
        if any(s.each for s in out.fhir[:-1]) or any(s.each for s in out.source[:-1]):
            raise self.fail(at, "only the last step of a path may be []")
        if "ref" in rule:
            out.kind, out.ref = "ref", rule["ref"]
            if out.source and out.source[-1].each != out.fhir[-1].each:
                raise self.fail(at, "source and fhir must both end in [] or neither")
            out.each = out.fhir[-1].each
            return out
        if not out.source:
            raise self.fail(at, "this rule needs a source, a const, a ref or rules")
        if out.fhir[-1].each != out.source[-1].each:
            raise self.fail(at, "source and fhir must both end in [] or neither")
        out.kind, out.each = "value", out.source[-1].each
        return out

    # --- generating
    def generate(self, cmap: CompiledMap, rules: list[_Rule], key: tuple[Step, ...]) -> None:
        fwd, rev = _Code(), _Code()
        fwd.line(0, "def forward(item, root, out, ctx, loc):")
        for rule in rules:
            self.forward(fwd, rule, 1, "item", "out", "loc")
        fwd.line(1, "return None")
        # make: the item id, the resource id, meta, then the same rules
        fwd.line(0, "def make(item, root, ctx, loc):")
        _emit_get(fwd, 1, "key", "root" if cmap.key_from_root else "item", key, trusted=True)
        fwd.line(1, "if key is MISSING or key is None:")
        fwd.line(2, f"_error(ctx.issues, 'required', {'no item id at ' + cmap.key!r}, loc)")
        fwd.line(2, "return None")
        fwd.line(1, "key = str(key)")
        fwd.line(1, f"rid = ctx.id({cmap.scope!r}, key)")
        meta = (
            "{'source': _item_source(key)"
            + (f", 'profile': [{cmap.profile!r}]" if cmap.profile else "")
            + "}"
        )
        fwd.line(1, f"out = {{'resourceType': {cmap.resource_type!r}, 'id': rid, 'meta': {meta}}}")
        for rule in rules:
            self.forward(fwd, rule, 1, "item", "out", "loc")
        fwd.line(1, "return key, rid, out")
        rev.line(0, "def reverse(node, item, root, res, loc):")
        for rule in rules:
            self.reverse(rev, rule, 1, "node", "item", "loc")
        rev.line(1, "return None")
        namespace_base = {
            "MISSING": MISSING,
            "_select": _select,
            "_find": _find,
            "_error": _error,
            "_resolve": _resolve,
            "_item_source": item_source,
        }
        source = "\n".join(fwd.lines) + "\n\n" + "\n".join(rev.lines) + "\n"
        cmap.code = source
        for code, name in ((fwd, "forward"), (rev, "reverse")):
            namespace = {**namespace_base, **code.names}
            exec(
                compile("\n".join(code.lines), f"<mapping {cmap.file}:{cmap.name}:{name}>", "exec"), namespace
            )
            setattr(cmap, name, namespace[name])
            if name == "forward":
                cmap.make = namespace["make"]

    def forward(self, code: _Code, rule: _Rule, d: int, item: str, out: str, loc: str) -> None:
        if not rule.to_fhir:
            return
        if rule.kind == "const":
            _emit_set(code, d, out, rule.fhir, repr(rule.const))
            return
        if rule.kind == "when":
            w = code.fresh("w")
            _emit_get(code, d, w, item, rule.when, trusted=True)
            test = f"{w} is not MISSING and {w} is not None"
            if rule.when_value:
                test += f" and str({w}) == {rule.when_value!r}"
            code.line(d, f"if {test}:")
            start = len(code.lines)
            for child in rule.children:
                self.forward(code, child, d + 1, item, out, loc)
            if len(code.lines) == start:
                code.line(d + 1, "pass")
            return
        if rule.kind == "ref" and not rule.source:
            ref = code.fresh("r")
            code.line(d, f"{ref} = ctx.singleton_refs.get({rule.ref!r})")
            code.line(d, f"if {ref} is not None:")
            _emit_set(code, d + 1, out, rule.fhir, f"{{'reference': {ref}}}")
            return
        v = code.fresh("v")
        _emit_get(code, d, v, "root" if rule.from_root else item, _plain(rule.source), trusted=True)
        # FHIR has no empty values: an empty list or string is no value at all
        code.line(d, f"if {v} is not MISSING and {v} is not None and {v} != [] and {v} != '':")
        d += 1
        fhir = _plain(rule.fhir)
        where = f"f'{{{loc}}}.{rule.source_text}'"
        if rule.kind == "ref":
            if rule.each:
                _emit_set(
                    code, d, out, fhir, f"[{{'reference': ctx.ref({rule.ref!r}, str(x))}} for x in {v}]"
                )
            else:
                _emit_set(code, d, out, fhir, f"{{'reference': ctx.ref({rule.ref!r}, str({v}))}}")
            return
        if rule.kind == "value":
            if rule.transform is None and rule.conceptmap is None:
                _emit_set(code, d, out, fhir, v)
                return
            if rule.each:
                made, x = code.fresh("m"), code.fresh("x")
                code.line(d, f"{made} = []")
                code.line(d, f"for {x} in {v}:")
                self.convert_forward(code, rule, d + 1, x, where)
                code.line(d + 1, f"if {x} is not MISSING:")
                code.line(d + 2, f"{made}.append({x})")
                _emit_set(code, d, out, fhir, made)
                return
            self.convert_forward(code, rule, d, v, where)
            code.line(d, f"if {v} is not MISSING:")
            _emit_set(code, d + 1, out, fhir, v)
            return
        # list of objects
        made, i, element, node = code.fresh("m"), code.fresh("i"), code.fresh("e"), code.fresh("o")
        child_loc = code.fresh("l")
        code.line(d, f"{made} = []")
        code.line(d, f"for {i}, {element} in enumerate({v}):")
        code.line(d + 1, f"{node} = {{}}")
        code.line(d + 1, f"{child_loc} = f'{{{loc}}}.{paths.render(_plain(rule.source))}[{{{i}}}]'")
        for child in rule.children:
            self.forward(code, child, d + 1, element, node, child_loc)
        code.line(d + 1, f"if {node}:")
        code.line(d + 2, f"{made}.append({node})")
        existing = code.fresh("x")
        _emit_get(code, d, existing, out, fhir, trusted=True)
        code.line(d, f"if {existing}.__class__ is list:")
        code.line(d + 1, f"{existing}.extend({made})")
        code.line(d, f"elif {made}:")
        _emit_set(code, d + 1, out, fhir, made)

    def convert_forward(self, code: _Code, rule: _Rule, d: int, v: str, where: str) -> None:
        """Rewrite ``v`` in place: transform then ConceptMap; MISSING (and an issue) when impossible."""
        if rule.transform is not None:
            fn = code.const(rule.transform.forward, "t")
            code.line(d, "try:")
            code.line(d + 1, f"{v} = {fn}({v})")
            code.line(d, "except _TransformError as exc:")
            code.line(d + 1, f"_error(ctx.issues, 'value', str(exc), {where})")
            code.line(d + 1, f"{v} = MISSING")
            code.names["_TransformError"] = transforms.TransformError
        if rule.conceptmap is not None:
            table = code.const(rule.conceptmap.forward, "cm")
            mapped = code.fresh("c")
            message = f"has no translation in ConceptMap {rule.conceptmap.id}"
            code.line(d, f"if {v} is not MISSING:")
            code.line(d + 1, f"{mapped} = {table}.get(str({v}))")
            code.line(d + 1, f"if {mapped} is None:")
            code.line(d + 2, f"_error(ctx.issues, 'code-invalid', f'{{{v}!r}} {message}', {where})")
            code.line(d + 1, f"{v} = MISSING if {mapped} is None else {mapped}")

    def reverse(self, code: _Code, rule: _Rule, d: int, node: str, item: str, loc: str) -> None:
        if not rule.to_muni or rule.kind == "const":
            return
        if rule.kind == "when":
            for child in rule.children:
                self.reverse(code, child, d, node, item, loc)
            return
        target = "root" if rule.from_root else item
        v = code.fresh("v")
        fhir = _plain(rule.fhir)
        fhir_text = paths.render(fhir)
        _emit_get(code, d, v, node, fhir, trusted=node == "node")
        if rule.kind == "ref":
            self.reverse_ref(code, rule, d, v, target, loc, fhir_text)
            return
        code.line(d, f"if {v} is not MISSING and {v} is not None:")
        d += 1
        source = _plain(rule.source)
        if rule.kind == "value":
            if rule.transform is None and rule.conceptmap is None:
                _emit_set(code, d, target, source, v)
                return
            where = f"f'{{{loc}}}.{fhir_text}'"
            if rule.each:
                made, x = code.fresh("m"), code.fresh("x")
                code.line(d, f"{made} = []")
                code.line(d, f"for {x} in {v}:")
                self.convert_reverse(code, rule, d + 1, x, where)
                code.line(d + 1, f"if {x} is not MISSING:")
                code.line(d + 2, f"{made}.append({x})")
                _emit_set(code, d, target, source, made)
                return
            self.convert_reverse(code, rule, d, v, where)
            code.line(d, f"if {v} is not MISSING:")
            _emit_set(code, d + 1, target, source, v)
            return
        # list of objects
        made, i, element, out = code.fresh("m"), code.fresh("i"), code.fresh("e"), code.fresh("o")
        child_loc = code.fresh("l")
        code.line(d, f"if {v}.__class__ is list:")
        code.line(d + 1, f"{made} = []")
        code.line(d + 1, f"for {i}, {element} in enumerate({v}):")
        code.line(d + 2, f"{out} = {{}}")
        code.line(d + 2, f"{child_loc} = f'{{{loc}}}.{fhir_text}[{{{i}}}]'")
        start = len(code.lines)
        for child in rule.children:
            self.reverse(code, child, d + 2, element, out, child_loc)
        if len(code.lines) == start:
            code.line(d + 2, "pass")
        code.line(d + 2, f"{made}.append({out})")
        code.line(d + 1, f"if {made}:")
        _emit_set(code, d + 2, target, source, made)

    def reverse_ref(
        self, code: _Code, rule: _Rule, d: int, v: str, target: str, loc: str, fhir_text: str
    ) -> None:
        message = f"reference does not resolve to a {rule.ref} resource in the Bundle"
        found = code.fresh("f")
        if not rule.source:
            code.line(d, f"if {v} is not MISSING:")
            code.line(d + 1, f"{found} = _resolve(res, {v})")
            code.line(d + 1, f"if {found} is None or {found}[0] != {rule.ref!r}:")
            code.line(d + 2, f"_error(res.issues, 'not-found', {message!r}, f'{{{loc}}}.{fhir_text}')")
            return
        source = _plain(rule.source)
        if rule.each:
            made, i, x = code.fresh("m"), code.fresh("i"), code.fresh("x")
            code.line(d, f"if {v}.__class__ is list:")
            code.line(d + 1, f"{made} = []")
            code.line(d + 1, f"for {i}, {x} in enumerate({v}):")
            code.line(d + 2, f"{found} = _resolve(res, {x})")
            code.line(d + 2, f"if {found} is None or {found}[0] != {rule.ref!r}:")
            code.line(
                d + 3, f"_error(res.issues, 'not-found', {message!r}, f'{{{loc}}}.{fhir_text}[{{{i}}}]')"
            )
            code.line(d + 2, "else:")
            code.line(d + 3, f"{made}.append({found}[1])")
            _emit_set(code, d + 1, target, source, made)
            return
        code.line(d, f"if {v} is not MISSING and {v} is not None:")
        code.line(d + 1, f"{found} = _resolve(res, {v})")
        code.line(d + 1, f"if {found} is None or {found}[0] != {rule.ref!r}:")
        code.line(d + 2, f"_error(res.issues, 'not-found', {message!r}, f'{{{loc}}}.{fhir_text}')")
        code.line(d + 1, "else:")
        _emit_set(code, d + 2, target, source, f"{found}[1]")

    def convert_reverse(self, code: _Code, rule: _Rule, d: int, v: str, where: str) -> None:
        """Rewrite ``v`` in place: ConceptMap back, then the inverse transform (the one-way function for
        a ``to-municipal`` rule); MISSING (and an issue) when impossible."""
        if rule.conceptmap is not None:
            table = code.const(rule.conceptmap.reverse, "cm")
            mapped = code.fresh("c")
            message = f"has no translation in ConceptMap {rule.conceptmap.id}"
            code.line(d, f"{mapped} = {table}.get(str({v}))")
            code.line(d, f"if {mapped} is None:")
            code.line(d + 1, f"_error(res.issues, 'code-invalid', f'{{{v}!r}} {message}', {where})")
            code.line(d, f"{v} = MISSING if {mapped} is None else {mapped}")
        if rule.transform is not None:
            fn = rule.transform.forward if not rule.to_fhir else rule.transform.inverse
            assert fn is not None
            name = code.const(fn, "t")
            code.names["_TransformError"] = transforms.TransformError
            code.line(d, f"if {v} is not MISSING:")
            code.line(d + 1, "try:")
            code.line(d + 2, f"{v} = {name}({v})")
            code.line(d + 1, "except _TransformError as exc:")
            code.line(d + 2, f"_error(res.issues, 'value', str(exc), {where})")
            code.line(d + 2, f"{v} = MISSING")
