"""StructureDefinition snapshots compiled once into a tree of checks, run on plain JSON dicts.

A snapshot element becomes a :class:`Node` only where it adds something to the base structure check:
a tighter cardinality, a ``fixed[x]`` or ``pattern[x]`` value, a *required* binding to a value set
that can be expanded from shipped data, a type profile (extensions, Identifier profiles), a target
profile on a Reference, an invariant, or slicing. Subtrees with nothing to check are pruned, so a
message costs only the checks its profiles actually add.

Slices are matched by their discriminators (``value``/``pattern`` on a path such as ``url``,
``system`` or ``extension('…').value.code``; ``type`` on ``$this`` or ``$this.content``); the value a
slice expects is read from the slice's own subtree (its fixed or pattern value, a pattern inherited
from a parent, or the extension profile's URL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from bridge.fhir.outcome import Issue
from bridge.medcom.validation import fhirpath
from bridge.medcom.validation.fastpaths import with_fast_path
from bridge.medcom.validation.terminology import (
    DK_CORE_IDENTIFIER_SYSTEMS,
    CodeSet,
    canonical,
    expand,
    structure_definition,
)


def _as_list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (absent, or wrongly a scalar) as empty."""
    return value if isinstance(value, list) else []


if TYPE_CHECKING:
    from bridge.medcom.validation.run import Run

_BASE_SOURCE = "http://hl7.org/fhir/StructureDefinition/"
ACK_ERRORS = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-acknowledgement-error-codes"

#: Base invariants the compiled checks do not evaluate as FHIRPath, and why.
SKIPPED_BASE_INVARIANTS: dict[str, str] = {
    "ele-1": "checked by the structure walk (empty objects, arrays and nulls)",
    "ext-1": "checked by the structure walk (an extension has a value or extensions, not both)",
    "bdl-12": "checked by the message rule 'header-first', which names the offending entry",
}
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class AnyOf:
    """A slice discriminator satisfied by any of several values (GLN under http and https)."""

    values: tuple[Any, ...]


@dataclass(slots=True)
class Invariant:
    """One compiled FHIRPath constraint."""

    key: str
    severity: str
    human: str
    expression: str
    fn: fhirpath.Fn
    base: bool


@dataclass(slots=True)
class Node:
    """The checks one snapshot element adds, and its children and slices."""

    id: str
    key: str  # the JSON name, without [x]
    choice: bool
    types: tuple[str, ...]
    is_list: bool
    min: int
    max: int | None
    min_check: int = 0
    max_check: int | None = None
    fixed: Any = _MISSING
    pattern: Any = _MISSING
    codes: CodeSet | None = None
    binding_url: str = ""
    type_profiles: tuple[str, ...] = ()
    declared_profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()
    invariants: list[Invariant] = field(default_factory=list)
    slicing: dict[str, Any] | None = None
    slice_name: str | None = None
    children: dict[str, Node] = field(default_factory=dict)
    slices: list[Node] = field(default_factory=list)
    matcher: Callable[[str, Any], bool] | None = None
    active: bool = False
    active_children: list[Node] = field(default_factory=list)
    json_keys: tuple[str, ...] = ()  # the JSON names: the key, or one per type of a choice element
    checks_value: bool = False  # a fixed or pattern value, a binding, type or target profiles
    visits: bool = False  # something to check on each value: checks_value, invariants or children
    absent_matters: bool = False  # when absent: a minimum cardinality, its own or a slice's
    one_value_ok: bool = False  # a single value meets the cardinality, and there are no slices
    closed: bool = False  # slicing rules 'closed': an item must match a slice
    slice_path: str = ""  # with slice_index: the element whose string value selects the slice
    slice_index: dict[str, int] | None = None  # that value -> the first slice it selects


def _json_keys(node: Node) -> tuple[str, ...]:
    if not node.choice:
        return (node.key,)
    return tuple(node.key + t[0].upper() + t[1:] for t in node.types if not t.startswith("http"))


def _card(value: Any) -> int | None:
    return None if value in (None, "*") else int(value)


def _split_id(element_id: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in element_id:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _compile_invariant(c: dict[str, Any]) -> Invariant | None:
    key = c.get("key", "")
    base = str(c.get("source", "")).startswith(_BASE_SOURCE)
    expression = c.get("expression")
    if not expression or (base and key in SKIPPED_BASE_INVARIANTS):
        return None
    try:
        fn = with_fast_path(expression, fhirpath.compile_expression(expression))
    except fhirpath.FhirPathUnsupported:
        fn = _fallback(expression)
    return Invariant(key, c.get("severity", "error"), c.get("human", ""), expression, fn, base)


def _fallback(expression: str) -> fhirpath.Fn:
    """Evaluate an expression outside the compiled subset with fhirpathpy (slower, no host functions)."""
    import fhirpathpy
    from fhirpathpy.models import models

    compiled = fhirpathpy.compile(expression, models["r4"])

    def run(env: fhirpath.Env, focus: fhirpath.Coll) -> fhirpath.Coll:
        try:
            data: Any = focus[0] if len(focus) == 1 else focus
            return list(compiled(data, {"resource": env.resource}))
        except Exception as exc:  # fhirpathpy raises bare exceptions of many kinds
            raise fhirpath.FhirPathError(str(exc)) from exc

    return run


def _element_node(el: dict[str, Any], segment: str) -> Node:
    name, _, slice_name = segment.partition(":")
    choice = name.endswith("[x]")
    types = tuple(t["code"] for t in el.get("type", []))
    base = el.get("base", {})
    base_max = _card(base.get("max", el.get("max")))
    node = Node(
        id=el["id"],
        key=name[:-3] if choice else name,
        choice=choice,
        types=types,
        is_list=base_max is None or base_max > 1,
        min=int(el.get("min", 0)),
        max=_card(el.get("max")),
        slice_name=slice_name or None,
    )
    node.json_keys = _json_keys(node)
    base_min = int(base.get("min", 0))
    node.min_check = node.min if node.min > base_min else 0
    if node.max is not None and (base_max is None or node.max < base_max):
        node.max_check = node.max
    for k, v in el.items():
        if k.startswith("fixed"):
            node.fixed = v
        elif k.startswith("pattern"):
            node.pattern = v
    binding = el.get("binding")
    if binding and binding.get("strength") == "required" and binding.get("valueSet"):
        node.binding_url = binding["valueSet"]
        node.codes = expand(binding["valueSet"])
    profiles: list[str] = []
    targets: list[str] = []
    for t in el.get("type", []):
        profiles.extend(canonical(p) for p in t.get("profile", []))
        targets.extend(canonical(p) for p in t.get("targetProfile", []))
    node.declared_profiles = tuple(profiles)
    node.type_profiles = tuple(p for p in profiles if structure_definition(p) is not None)
    node.target_profiles = tuple(targets) if any(structure_definition(p) for p in targets) else ()
    for c in el.get("constraint", []):
        inv = _compile_invariant(c)
        if inv is not None:
            node.invariants.append(inv)
    if el.get("slicing"):
        node.slicing = el["slicing"]
        node.closed = el["slicing"].get("rules") == "closed"
    return node


def _activate(node: Node) -> bool:
    for child in node.children.values():
        _activate(child)
    for s in node.slices:
        _activate(s)
        s.active = True  # a slice's own cardinality is always checked
    node.active_children = [c for c in node.children.values() if c.active]
    if node.type_profiles and node.children:
        node.type_profiles = ()  # the snapshot already inlines the profile's elements
    node.checks_value = bool(
        node.fixed is not _MISSING
        or node.pattern is not _MISSING
        or node.codes is not None
        or node.target_profiles
        or node.type_profiles
    )
    node.visits = bool(node.checks_value or node.invariants or node.active_children)
    node.absent_matters = node.min_check > 0 or any(s.min > 0 for s in node.slices)
    node.one_value_ok = (
        node.min_check <= 1 and (node.max_check is None or node.max_check >= 1) and not node.slices
    )
    node.active = bool(
        node.active_children
        or node.slices
        or node.min_check
        or node.max_check is not None
        or node.fixed is not _MISSING
        or node.pattern is not _MISSING
        or node.codes is not None
        or node.type_profiles
        or node.target_profiles
        or node.invariants
    )
    return node.active


@cache
def compile_profile(url: str) -> Node | None:
    """The compiled check tree of a shipped StructureDefinition (None when not shipped)."""
    sd = structure_definition(url)
    if sd is None:
        return None
    nodes: dict[str, Node] = {}
    root: Node | None = None
    for el in sd["snapshot"]["element"]:
        segments = _split_id(el["id"])
        node = _element_node(el, segments[-1])
        nodes[el["id"]] = node
        if len(segments) == 1:
            root = node
            continue
        parent_id = ".".join(segments[:-1])
        parent = nodes.get(parent_id)
        if parent is None:
            continue
        if node.slice_name is not None:
            base = nodes.get(f"{parent_id}.{segments[-1].partition(':')[0]}")
            if base is not None and "/" not in node.slice_name:
                base.slices.append(node)
        else:
            parent.children[node.key] = node
    if root is None:
        return None
    _activate(root)
    root.active = True
    _build_matchers(root)
    return root


# ---- slice matching -----------------------------------------------------------------------------


def _slice_url(node: Node) -> Any:
    url_child = node.children.get("url")
    if url_child is not None and url_child.fixed is not _MISSING:
        return url_child.fixed
    for t in node.types:
        if t == "Extension" and node.type_profiles:
            return node.type_profiles[0]
    return _MISSING


def _expected(node: Node, path: str) -> Any:
    """The value a slice requires at a discriminator path, read from its subtree."""
    candidates: list[tuple[Node | None, Any]] = [(node, _MISSING)]
    for part in _split_id(path):
        if part == "$this":
            continue
        nxt: list[tuple[Node | None, Any]] = []
        for cur, inherited in candidates:
            if part.startswith("extension("):
                url = part[len("extension(") : -1].strip("'")
                ext = cur.children.get("extension") if cur else None
                if ext is not None:
                    nxt.extend((s, _MISSING) for s in ext.slices if _slice_url(s) == url)
                continue
            if part == "url" and cur is not None and "url" not in cur.children:
                nxt.append((None, _slice_url(cur)))
                continue
            sys_child = cur.children.get("system") if cur is not None else None
            if (
                part == "system"
                and cur is not None
                and (sys_child is None or (sys_child.fixed is _MISSING and sys_child.pattern is _MISSING))
            ):
                systems = [
                    DK_CORE_IDENTIFIER_SYSTEMS[p]
                    for p in cur.declared_profiles
                    if p in DK_CORE_IDENTIFIER_SYSTEMS
                ]
                if systems:
                    nxt.append((None, AnyOf(systems[0]) if len(systems[0]) > 1 else systems[0][0]))
                    continue
            inherit = _MISSING
            for source in (inherited, cur.fixed if cur else _MISSING, cur.pattern if cur else _MISSING):
                if isinstance(source, dict) and part in source:
                    inherit = source[part]
            child = cur.children.get(part) if cur else None
            if child is not None:
                nxt.append((child, inherit))
                nxt.extend((s, inherit) for s in child.slices)
            elif inherit is not _MISSING:
                nxt.append((None, inherit))
        candidates = nxt
    for cur, inherited in candidates:
        if cur is not None and cur.fixed is not _MISSING:
            return cur.fixed
        if cur is not None and cur.pattern is not _MISSING:
            return cur.pattern
        if inherited is not _MISSING:
            return inherited
    return _MISSING


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] semantics: every element of the pattern is present with the same value."""
    if isinstance(pattern, AnyOf):
        return any(matches_pattern(value, p) for p in pattern.values)
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(matches_pattern(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(matches_pattern(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def _build_matchers(node: Node) -> None:
    for child in node.children.values():
        _build_matchers(child)
    for s in node.slices:
        _build_matchers(s)
    if not node.slices or not node.slicing:
        return
    for s in node.slices:
        s.matcher = _slice_matcher(node, s)
    _index_slices(node)


_SIMPLE_PATHS = ("url", "system", "role", "use", "id")


def _index_slices(base: Node) -> None:
    """Slicing by one value discriminator on a simple element (url, system, use ...) whose expected
    values are strings: index each string to the first slice it selects, the slice the matchers would
    find, so that an item finds its slice with one lookup."""
    discriminators = (base.slicing or {}).get("discriminator", [])
    if len(discriminators) != 1:
        return
    dtype, path = discriminators[0].get("type"), discriminators[0].get("path", "$this")
    if dtype not in ("value", "pattern") or path not in _SIMPLE_PATHS:
        return
    index: dict[str, int] = {}
    for i, s in enumerate(base.slices):
        expected = _expected(s, path)
        if expected is _MISSING:
            continue  # no test: the slice's matcher never matches
        values = expected.values if isinstance(expected, AnyOf) else (expected,)
        if not all(isinstance(v, str) for v in values):
            return
        for v in values:
            index.setdefault(v, i)
    base.slice_path, base.slice_index = path, index


def _slice_matcher(base: Node, s: Node) -> Callable[[str, Any], bool]:
    discriminators = (base.slicing or {}).get("discriminator", [])
    tests: list[Callable[[str, Any], bool]] = []
    for d in discriminators:
        dtype, path = d.get("type"), d.get("path", "$this")
        if dtype == "type":
            tests.append(_type_test(base, s, path))
        elif dtype in ("value", "pattern"):
            expected = _expected(s, path)
            if expected is _MISSING:
                continue
            tests.append(_value_test(path, expected))
    if not tests:
        return lambda key, value: False
    if len(tests) == 1:
        return tests[0]

    def matcher(key: str, value: Any) -> bool:
        for test in tests:
            if not test(key, value):
                return False
        return True

    return matcher


def _type_test(base: Node, s: Node, path: str) -> Callable[[str, Any], bool]:
    if path == "$this":
        keys = frozenset(base.key + t[0].upper() + t[1:] for t in s.types)
        return lambda key, value: key in keys
    child_name = path.removeprefix("$this.")
    child = s.children.get(child_name)
    types = child.types if child is not None else ()
    keys = frozenset(child_name + t[0].upper() + t[1:] for t in types)
    return lambda key, value: isinstance(value, dict) and any(k in value for k in keys)


def _value_test(path: str, expected: Any) -> Callable[[str, Any], bool]:
    if path in _SIMPLE_PATHS:
        if isinstance(expected, str):  # matches_pattern of a string is equality
            return lambda key, value: isinstance(value, dict) and value.get(path) == expected
        return lambda key, value: isinstance(value, dict) and matches_pattern(value.get(path), expected)
    fn = fhirpath.compile_expression(path)

    def test(key: str, value: Any) -> bool:
        try:
            found = fn(fhirpath.Env(resource=value, context=value), [value])
        except fhirpath.FhirPathError:
            return False
        return any(matches_pattern(v, expected) for v in found)

    return test


# ---- evaluation ---------------------------------------------------------------------------------

Item = tuple[str, Any, str]  # (JSON key, value, location)


def check_root(root: Node, value: dict[str, Any], path: str, run: Run, resource: Any) -> None:
    """Run a compiled profile's checks on a resource (or a data type value) at ``path``."""
    _check_value(root, value, path, run, resource)


def _items(node: Node, obj: dict[str, Any], path: str, run: Run) -> list[Item]:
    if not node.choice:
        key = node.key
        value = obj.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            return [(key, v, f"{path}.{key}[{i}]") for i, v in enumerate(value) if v is not None]
        return [(key, value, f"{path}.{key}")]
    out: list[Item] = []
    for key in node.json_keys:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            out.extend((key, v, f"{path}.{key}[{i}]") for i, v in enumerate(value) if v is not None)
        else:
            out.append((key, value, f"{path}.{key}"))
    if node.choice:
        n = len(node.key)
        allowed = node.json_keys
        for key in obj:
            if len(key) > n and key.startswith(node.key) and key[n].isupper() and key not in allowed:
                run.add(
                    Issue(
                        "error",
                        "structure",
                        f"{key}: type not allowed by the profile here (allowed: {', '.join(allowed)})",
                        (f"{path}.{key}",),
                        (ACK_ERRORS, "MSG_Datatype_Wrong"),
                    )
                )
    return out


def _check_children(node: Node, obj: dict[str, Any], path: str, run: Run, resource: Any) -> None:
    for child in node.active_children:
        if not child.choice:
            value = obj.get(child.key)
            if value is None and not child.absent_matters:
                continue  # absent, and nothing requires it
            if child.one_value_ok and value is not None and not isinstance(value, list):
                if child.visits:
                    _check_value(child, value, f"{path}.{child.key}", run, resource)
                continue
        items = _items(child, obj, path, run)
        n = len(items)
        if n < child.min_check:
            run.add(
                Issue(
                    "error",
                    "required",
                    f"{child.id}: minimum cardinality is {child.min}, found {n}",
                    (f"{path}.{child.json_keys[0] if len(child.json_keys) == 1 else child.key}",),
                )
            )
        if child.max_check is not None and n > child.max_check:
            run.add(
                Issue(
                    "error",
                    "structure",
                    f"{child.id}: maximum cardinality is {child.max_check}, found {n}",
                    (items[child.max_check][2],),
                )
            )
        if child.visits:
            for _key, value, item_path in items:
                _check_value(child, value, item_path, run, resource)
        if child.slices:
            _check_slices(child, items, path, run, resource)


def _slice_of(node: Node, key: str, value: Any) -> int:
    """The index of the first slice of ``node`` that an item matches, or -1."""
    index = node.slice_index
    if index is not None:
        found = value.get(node.slice_path) if isinstance(value, dict) else None
        return index.get(found, -1) if isinstance(found, str) else -1
    for i, s in enumerate(node.slices):
        if s.matcher is not None and s.matcher(key, value):
            return i
    return -1


def _check_slices(node: Node, items: list[Item], path: str, run: Run, resource: Any) -> None:
    buckets: list[list[Item]] = [[] for _ in node.slices]
    for item in items:
        i = _slice_of(node, item[0], item[1])
        if i >= 0:
            buckets[i].append(item)
        elif node.closed:
            run.add(
                Issue(
                    "error",
                    "structure",
                    f"{node.id}: the value matches none of the allowed slices "
                    f"({', '.join(str(s.slice_name) for s in node.slices)})",
                    (item[2],),
                )
            )
    for i, s in enumerate(node.slices):
        got = buckets[i]
        if len(got) < s.min:
            run.add(
                Issue(
                    "error",
                    "required",
                    f"{s.id}: slice '{s.slice_name}' requires at least {s.min}, found {len(got)}",
                    (f"{path}.{node.key}",),
                )
            )
        if s.max is not None and len(got) > s.max:
            run.add(
                Issue(
                    "error",
                    "structure",
                    f"{s.id}: slice '{s.slice_name}' allows at most {s.max}, found {len(got)}",
                    (got[s.max][2],),
                )
            )
        for _key, value, item_path in got:
            _check_value(s, value, item_path, run, resource)


def _check_value(node: Node, value: Any, path: str, run: Run, resource: Any) -> None:
    if node.checks_value:
        _check_own_value(node, value, path, run, resource)
    if node.invariants:
        run.check_invariants(node.invariants, value, path, resource)
    if node.active_children and isinstance(value, dict):
        _check_children(node, value, path, run, resource)


def _check_own_value(node: Node, value: Any, path: str, run: Run, resource: Any) -> None:
    """The checks on the value itself: fixed, pattern, binding, target and type profiles."""
    if node.fixed is not _MISSING and value != node.fixed:
        run.add(Issue("error", "value", f"{node.id}: must be exactly {node.fixed!r}", (path,)))
    if node.pattern is not _MISSING and not matches_pattern(value, node.pattern):
        run.add(Issue("error", "value", f"{node.id}: must match the pattern {node.pattern!r}", (path,)))
    if node.codes is not None:
        _check_binding(node, node.codes, value, path, run)
    if node.target_profiles and isinstance(value, dict):
        run.check_reference_target(value, node.target_profiles, path)
    if node.type_profiles and isinstance(value, dict):
        for url in node.type_profiles:
            run.check_type_profile(url, value, path, resource)


def _check_binding(node: Node, codes: CodeSet, value: Any, path: str, run: Run) -> None:
    if isinstance(value, str):
        if not codes.has_code(value):
            run.add(_code_issue(node, f"code {value!r}", path))
        return
    if not isinstance(value, dict):
        return
    if "coding" in value or "text" in value:
        codings = _as_list(value.get("coding"))
        if not any(isinstance(c, dict) and codes.has_coding(c.get("system"), c.get("code")) for c in codings):
            shown = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings if isinstance(c, dict))
            run.add(_code_issue(node, f"coding {shown or '(none)'}", path))
        return
    if "code" in value or "system" in value:
        if not codes.has_coding(value.get("system"), value.get("code")):
            run.add(_code_issue(node, f"coding {value.get('system')}#{value.get('code')}", path))


def _code_issue(node: Node, what: str, path: str) -> Issue:
    return Issue(
        "error",
        "code-invalid",
        f"{node.id}: {what} is not in the required value set {canonical(node.binding_url)}",
        (path,),
        (ACK_ERRORS, "MSG_VALUESET_VALUE_UNKNOWN"),
    )
