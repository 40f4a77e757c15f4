"""A small FHIRPath compiler for profile invariants, working on plain FHIR JSON dicts.

The invariants MedCom and the base spec declare use a small part of FHIRPath (paths, ``where``,
``exists``, ``all``, ``iif``, ``resolve()``, ``memberOf``, ``conformsTo``, boolean logic and
comparison). ``fhirpathpy`` evaluates all of FHIRPath but costs 50-200 µs per expression, which alone
would exceed the budget of a whole message; this module compiles each expression once into nested
Python closures that evaluate the same expression in a few microseconds. An expression that uses a
construct outside the subset raises :class:`FhirPathUnsupported` at compile time, and the caller falls
back to ``fhirpathpy`` for it.

Semantics follow FHIRPath N1 (the version FHIR R4 uses): collections everywhere, empty propagation in
operators, three-valued boolean logic, ``matches`` as a regex search. Type tests are decided from JSON
alone: a resource type by ``resourceType``, a primitive type by the JSON value's kind; complex data
types cannot be told apart in JSON and match any object that is not a resource.

Functions that need the message (``resolve``, ``memberOf``, ``conformsTo``) call a :class:`Host`.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

Coll = list[Any]


class FhirPathUnsupported(Exception):
    """The expression uses FHIRPath outside the compiled subset."""


class FhirPathError(Exception):
    """The expression failed while evaluating (for instance a non-singleton where one is required)."""


class Host(Protocol):
    """What an expression may ask of the message it runs in."""

    def resolve(self, reference: str) -> dict[str, Any] | None: ...

    def member_of(self, item: Any, valueset_url: str) -> bool: ...

    def conforms_to(self, resource: dict[str, Any], profile_url: str) -> bool: ...


@dataclass(slots=True)
class Env:
    """Evaluation environment: ``%resource``, ``%context`` and the host."""

    resource: Any
    context: Any
    host: Host | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)  # per message: results that do not change


Fn = Callable[[Env, Coll], Coll]

# Compiled sub-expressions whose value does not depend on the focus (``%resource.type``, literals):
# inside ``all()`` or ``where()`` they are evaluated once per resource instead of once per item.
_INDEPENDENT: weakref.WeakSet[Fn] = weakref.WeakSet()


def _independent(fn: Fn) -> Fn:
    _INDEPENDENT.add(fn)
    return fn


_CONSTANTS: weakref.WeakSet[Fn] = weakref.WeakSet()


def _once_per_resource(fn: Fn) -> Fn:
    if fn not in _INDEPENDENT or fn in _CONSTANTS:
        return fn

    def cached(env: Env, focus: Coll) -> Coll:
        key = (id(fn), id(env.resource))
        found = env.memo.get(key)
        if found is None:
            found = env.memo[key] = fn(env, focus)
        return found

    return _independent(cached)


# Element names that are choice types ([x]) somewhere in R4; only these trigger the slower key scan.
_CHOICE_NAMES = frozenset(
    {
        "value",
        "occurred",
        "content",
        "event",
        "deceased",
        "multipleBirth",
        "effective",
        "onset",
        "abatement",
        "timing",
        "performed",
        "serviced",
        "location",
        "born",
        "age",
        "asNeeded",
        "dose",
        "rate",
        "medication",
        "product",
        "item",
        "subject",
        "defaultValue",
        "fixed",
        "pattern",
        "minValue",
        "maxValue",
        "answer",
        "initial",
        "allowed",
        "used",
        "source",
        "target",
        "reported",
        "collected",
        "time",
        "detail",
        "scheduled",
        "bodySite",
        "definition",
        "identified",
        "recorded",
        "probability",
        "when",
        "diagnosis",
        "procedure",
        "benefit",
        "entity",
        "factor",
        "quantity",
        "amount",
        "duration",
        "offset",
        "period",
    }
)
_PRIMITIVE_STR = frozenset(
    {
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "date",
        "dateTime",
        "instant",
        "time",
        "xhtml",
    }
)
_PRIMITIVE_INT = frozenset({"integer", "positiveInt", "unsignedInt"})
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<bt>`[^`]*`)
      | (?P<var>%[A-Za-z_][A-Za-z0-9_]*|%`[^`]*`)
      | (?P<dollar>\$this|\$index|\$total)
      | (?P<op><=|>=|!=|!~|[.()\[\],=<>|&+\-*/~])
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise FhirPathUnsupported(f"cannot read FHIRPath at {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), value[1:-1])
        elif kind == "bt":
            kind, value = "ident", value[1:-1]
        tokens.append((kind, value))
        while pos < len(text) and text[pos].isspace():
            pos += 1
    tokens.append(("end", ""))
    return tokens


# ---- evaluation helpers -------------------------------------------------------------------------


def _flatten_into(out: Coll, value: Any) -> None:
    if isinstance(value, list):
        if None in value:
            out.extend([v for v in value if v is not None])
        else:
            out.extend(value)
    elif value is not None:
        out.append(value)


def _child(items: Coll, name: str) -> Coll:
    out: Coll = []
    for item in items:
        if not isinstance(item, dict):
            # On a primitive, ``value`` is the primitive's own value (as in the HL7 validator).
            if name == "value" and item is not None:
                out.append(item)
            continue
        value = item.get(name)
        if value is not None:
            _flatten_into(out, value)
        elif name in _CHOICE_NAMES:
            n = len(name)
            for key, v in item.items():
                if len(key) > n and key.startswith(name) and key[n].isupper():
                    _flatten_into(out, v)
    return out


def to_bool(coll: Coll) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (None = empty)."""
    if not coll:
        return None
    if len(coll) == 1:
        v = coll[0]
        return v if isinstance(v, bool) else True
    raise FhirPathError("a boolean was expected but the collection has several items")


def _single(coll: Coll) -> Any:
    if len(coll) > 1:
        raise FhirPathError("a single value was expected but the collection has several items")
    return coll[0] if coll else None


@cache
def _resource_types() -> frozenset[str]:
    """R4 resource type names, from fhirpathpy's R4 model (type -> parent type)."""
    from fhirpathpy.models import models

    parents: dict[str, str] = models["r4"]["type2Parent"]
    found = {"Resource", "DomainResource"}
    for name in parents:
        cur: str | None = name
        while cur is not None and cur not in found:
            cur = parents.get(cur)
        if cur is not None:
            found.add(name)
    return frozenset(found)


def _type_name(type_name: str) -> str:
    """The name :func:`_is_type` compares: ``FHIR.Patient`` and ``System.String`` without namespace."""
    return type_name.rsplit(".", 1)[-1]


def _is_type(item: Any, name: str) -> bool:
    if isinstance(item, dict):
        rt = item.get("resourceType")
        if rt is not None:
            return name in (rt, "Resource", "DomainResource")
        if name in _resource_types():
            return False
        return name[:1].isupper() and name not in ("String", "Boolean", "Integer", "Decimal")
    if isinstance(item, bool):
        return name in ("boolean", "Boolean")
    if isinstance(item, int):
        return name in _PRIMITIVE_INT or name in ("Integer", "decimal", "Decimal")
    if isinstance(item, float):
        return name in ("decimal", "Decimal")
    if isinstance(item, str):
        return name in _PRIMITIVE_STR or name in ("String", "DateTime", "Date", "Time")
    return False


def _equal(a: Coll, b: Coll) -> Coll:
    if not a or not b:
        return []
    if len(a) != len(b):
        return [False]
    if len(a) == 1:
        return [bool(a[0] == b[0])]
    return [all(x == y for x, y in zip(a, b, strict=True))]


def _compare(op: str, a: Coll, b: Coll) -> Coll:
    x, y = _single(a), _single(b)
    if x is None or y is None:
        return []
    try:
        if op == "<":
            return [x < y]
        if op == ">":
            return [x > y]
        if op == "<=":
            return [x <= y]
        return [x >= y]
    except TypeError as exc:
        raise FhirPathError(f"cannot compare {x!r} and {y!r}") from exc


def _descendants(items: Coll) -> Coll:
    out: Coll = []
    stack = list(reversed(items))
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, v in item.items():
                if key == "resourceType" or key.startswith("_"):
                    continue
                kids: Coll = []
                _flatten_into(kids, v)
                out.extend(kids)
                stack.extend(reversed(kids))
    return out


# XHTML names are lower case, so case-sensitive patterns with a literal first character suffice.
_ACTIVE_CONTENT = re.compile(r"<(?:script|iframe|object|embed|form|style|link|meta|base|applet)\b")
_EVENT_HANDLER = re.compile(r"on[a-z]+\s*=")
_TEXT_RE = re.compile(r">\s*[^<\s]")


def html_checks(div: Any) -> bool:
    """txt-1/txt-2: an xhtml ``div`` with no active content and some non-whitespace text."""
    if not isinstance(div, str) or not div.lstrip().startswith("<div"):
        return False
    if _ACTIVE_CONTENT.search(div) or _EVENT_HANDLER.search(div):
        return False
    return _TEXT_RE.search(div) is not None or "<img" in div


# ---- parser: precedence climbing into closures -------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, str]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise FhirPathUnsupported(f"expected {value!r}, found {tok[1]!r}")

    def parse(self) -> Fn:
        fn = self.expr(0)
        if self.peek()[0] != "end":
            raise FhirPathUnsupported(f"unexpected {self.peek()[1]!r}")
        return fn

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"implies"}),
        frozenset({"or", "xor"}),
        frozenset({"and"}),
        frozenset({"in", "contains"}),
        frozenset({"=", "~", "!=", "!~"}),
        frozenset({"<", ">", "<=", ">="}),
        frozenset({"|"}),
        frozenset({"is", "as"}),
        frozenset({"+", "-", "&"}),
        frozenset({"*", "/", "div", "mod"}),
    )

    def expr(self, level: int) -> Fn:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.expr(level + 1)
        ops = self._LEVELS[level]
        while True:
            kind, value = self.peek()
            if kind not in ("op", "ident") or value not in ops:
                return left
            self.take()
            if value in ("is", "as"):
                type_name = self.type_name()
                left = _type_op(value, left, type_name)
                continue
            right = self.expr(level + 1)
            left = _binary(value, left, right)

    def type_name(self) -> str:
        kind, name = self.take()
        if kind != "ident":
            raise FhirPathUnsupported("type name expected")
        while self.peek()[1] == ".":
            self.take()
            name += "." + self.take()[1]
        return name

    def unary(self) -> Fn:
        if self.peek()[1] in ("+", "-"):
            sign = self.take()[1]
            inner = self.unary()
            if sign == "+":
                return inner

            def neg(env: Env, focus: Coll) -> Coll:
                return [-v for v in inner(env, focus)]

            return neg
        return self.postfix()

    def postfix(self) -> Fn:
        fn = self.term()
        while True:
            value = self.peek()[1]
            if value == ".":
                self.take()
                fn = _chain(fn, self.invocation())
            elif value == "[":
                self.take()
                index = self.expr(0)
                self.expect("]")
                fn = _indexer(fn, index)
            else:
                return fn

    def term(self) -> Fn:
        kind, value = self.peek()
        if kind == "str":
            self.take()
            return _const([value])
        if kind == "num":
            self.take()
            return _const([float(value) if "." in value else int(value)])
        if kind == "ident" and value in ("true", "false"):
            self.take()
            return _const([value == "true"])
        if kind == "var":
            self.take()
            return _variable(value[1:].strip("`"))
        if kind == "dollar":
            self.take()
            if value != "$this":
                raise FhirPathUnsupported(f"{value} is not supported")
            return _this
        if value == "(":
            self.take()
            inner = self.expr(0)
            self.expect(")")
            return inner
        if value == "{":
            raise FhirPathUnsupported("collection literals are not supported")
        return self.invocation(root=True)

    def invocation(self, root: bool = False) -> Fn:
        kind, name = self.take()
        if kind != "ident":
            raise FhirPathUnsupported(f"name expected, found {name!r}")
        if self.peek()[1] == "(":
            self.take()
            args: list[Fn] = []
            raw: list[str] = []
            if self.peek()[1] != ")":
                while True:
                    start = self.pos
                    args.append(self.expr(0))
                    raw.append(" ".join(t[1] for t in self.tokens[start : self.pos]))
                    if self.peek()[1] == ",":
                        self.take()
                        continue
                    break
            self.expect(")")
            return _function(name, args, raw)
        if root and name[:1].isupper():
            return _type_root(name)
        return _member(name)


def _const(value: Coll) -> Fn:
    def const(env: Env, focus: Coll) -> Coll:
        return value

    _CONSTANTS.add(const)
    return _independent(const)


def _this(env: Env, focus: Coll) -> Coll:
    return focus


def _variable(name: str) -> Fn:
    def var(env: Env, focus: Coll) -> Coll:
        if name == "resource" or name == "rootResource":
            return [env.resource]
        if name == "context":
            return [env.context]
        if name in env.variables:
            return [env.variables[name]]
        if name == "ucum":
            return ["http://unitsofmeasure.org"]
        raise FhirPathError(f"unknown variable %{name}")

    return _independent(var)


def _type_root(name: str) -> Fn:
    # ``Bundle.entry`` evaluated on a Bundle: a leading type name selects the focus when it matches.
    def root(env: Env, focus: Coll) -> Coll:
        matched = [f for f in focus if isinstance(f, dict) and f.get("resourceType") == name]
        return matched if matched else _child(focus, name)

    return root


def _member(name: str) -> Fn:
    def member(env: Env, focus: Coll) -> Coll:
        return _child(focus, name)

    return member


# The steps of each compiled path (``a.b.c``): a longer path extends its prefix's steps and runs them
# in one loop instead of one nested call per step.
_CHAIN_STEPS: weakref.WeakKeyDictionary[Fn, tuple[Fn, ...]] = weakref.WeakKeyDictionary()


def _chain(left: Fn, right: Fn) -> Fn:
    steps = (*_CHAIN_STEPS.get(left, (left,)), right)

    def chain(env: Env, focus: Coll) -> Coll:
        for step in steps:
            focus = step(env, focus)
        return focus

    _CHAIN_STEPS[chain] = steps
    return _independent(chain) if left in _INDEPENDENT else chain


def _indexer(base: Fn, index: Fn) -> Fn:
    def indexer(env: Env, focus: Coll) -> Coll:
        items = base(env, focus)
        i = _single(index(env, focus))
        if not isinstance(i, int) or i < 0 or i >= len(items):
            return []
        return [items[i]]

    return indexer


def _type_op(op: str, operand: Fn, type_name: str) -> Fn:
    name = _type_name(type_name)

    def type_op(env: Env, focus: Coll) -> Coll:
        items = operand(env, focus)
        if op == "is":
            if not items:
                return []
            return [_is_type(_single(items), name)]
        return [i for i in items if _is_type(i, name)]

    return type_op


def _binary(op: str, left: Fn, right: Fn) -> Fn:
    both = left in _INDEPENDENT and right in _INDEPENDENT
    fn = _binary_op(op, _once_per_resource(left), _once_per_resource(right))
    return _independent(fn) if both else fn


def _binary_op(op: str, left: Fn, right: Fn) -> Fn:
    if op == "and":

        def and_(env: Env, focus: Coll) -> Coll:
            a = to_bool(left(env, focus))
            if a is False:
                return [False]
            b = to_bool(right(env, focus))
            if b is False:
                return [False]
            return [True] if a and b else []

        return and_
    if op == "or":

        def or_(env: Env, focus: Coll) -> Coll:
            a = to_bool(left(env, focus))
            if a is True:
                return [True]
            b = to_bool(right(env, focus))
            if b is True:
                return [True]
            return [False] if a is False and b is False else []

        return or_
    if op == "xor":

        def xor(env: Env, focus: Coll) -> Coll:
            a, b = to_bool(left(env, focus)), to_bool(right(env, focus))
            return [] if a is None or b is None else [a != b]

        return xor
    if op == "implies":

        def implies(env: Env, focus: Coll) -> Coll:
            a = to_bool(left(env, focus))
            if a is False:
                return [True]
            b = to_bool(right(env, focus))
            if a is True:
                return [] if b is None else [b]
            return [True] if b is True else []

        return implies
    if op in ("=", "~"):
        return lambda env, focus: _equal(left(env, focus), right(env, focus))
    if op in ("!=", "!~"):

        def unequal(env: Env, focus: Coll) -> Coll:
            r = _equal(left(env, focus), right(env, focus))
            return [not r[0]] if r else []

        return unequal
    if op in ("<", ">", "<=", ">="):
        return lambda env, focus: _compare(op, left(env, focus), right(env, focus))
    if op == "|":

        def union(env: Env, focus: Coll) -> Coll:
            out: Coll = []
            for v in left(env, focus) + right(env, focus):
                if v not in out:
                    out.append(v)
            return out

        return union
    if op == "&":

        def concat(env: Env, focus: Coll) -> Coll:
            a, b = _single(left(env, focus)), _single(right(env, focus))
            return [f"{'' if a is None else a}{'' if b is None else b}"]

        return concat
    if op == "+":

        def plus(env: Env, focus: Coll) -> Coll:
            a, b = _single(left(env, focus)), _single(right(env, focus))
            if a is None or b is None:
                return []
            if isinstance(a, str) != isinstance(b, str):
                raise FhirPathError("cannot add a string and a number")
            return [a + b]

        return plus
    if op in ("in", "contains"):

        def member(env: Env, focus: Coll) -> Coll:
            a, b = left(env, focus), right(env, focus)
            item, coll = (a, b) if op == "in" else (b, a)
            if not item:
                return []
            return [_single(item) in coll]

        return member
    raise FhirPathUnsupported(f"operator {op!r} is not supported")


def _string_fn(name: str, args: list[Fn]) -> Fn:
    if name == "matches":
        arg = args[0]

        def matches(env: Env, focus: Coll) -> Coll:
            s = _single(focus)
            pattern = _single(arg(env, focus))
            if s is None or pattern is None:
                return []
            return [_regex(str(pattern)).search(str(s)) is not None]

        return matches
    if name in ("startsWith", "endsWith"):
        arg = args[0]
        starts = name == "startsWith"

        def affix(env: Env, focus: Coll) -> Coll:
            s = _single(focus)
            a = _single(arg(env, focus))
            if s is None or a is None:
                return []
            return [str(s).startswith(a) if starts else str(s).endswith(a)]

        return affix
    arg = args[0]

    def contains(env: Env, focus: Coll) -> Coll:
        s = _single(focus)
        a = _single(arg(env, focus))
        if s is None or a is None:
            return []
        return [a in str(s)]

    return contains


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    compiled = _REGEX_CACHE.get(pattern)
    if compiled is None:
        compiled = _REGEX_CACHE[pattern] = re.compile(pattern)
    return compiled


def _literal_arg(raw: list[str], name: str) -> str:
    if len(raw) != 1:
        raise FhirPathUnsupported(f"{name}() takes one argument")
    return raw[0].strip("'` ")


def _function(name: str, args: list[Fn], raw: list[str]) -> Fn:
    n = len(args)
    if name in ("where", "select", "all", "exists") and n <= 1:
        return _lambda_fn(name, args[0] if args else None)
    if name == "empty" and n == 0:
        return lambda env, focus: [not focus]
    if name == "not" and n == 0:

        def not_(env: Env, focus: Coll) -> Coll:
            b = to_bool(focus)
            return [] if b is None else [not b]

        return not_
    if name == "count" and n == 0:
        return lambda env, focus: [len(focus)]
    if name == "first" and n == 0:
        return lambda env, focus: focus[:1]
    if name == "last" and n == 0:
        return lambda env, focus: focus[-1:]
    if name == "single" and n == 0:
        return lambda env, focus: [] if not focus else [_single(focus)]
    if name in ("ofType", "is", "as") and n == 1:
        type_name = _type_name(_literal_arg(raw, name))
        if name == "is":
            return lambda env, focus: [] if not focus else [_is_type(_single(focus), type_name)]
        return lambda env, focus: [i for i in focus if _is_type(i, type_name)]
    if name == "iif" and n in (2, 3):
        crit, then = args[0], args[1]
        other = args[2] if n == 3 else None

        def iif(env: Env, focus: Coll) -> Coll:
            if to_bool(crit(env, focus)) is True:
                return then(env, focus)
            return other(env, focus) if other is not None else []

        return iif
    if name in ("matches", "startsWith", "endsWith", "contains") and n == 1:
        return _string_fn(name, args)
    if name == "hasValue" and n == 0:
        return lambda env, focus: [len(focus) == 1 and not isinstance(focus[0], dict)]
    if name in ("isDistinct", "distinct") and n == 0:

        def distinct(env: Env, focus: Coll) -> Coll:
            seen: Coll = []
            for v in focus:
                if v not in seen:
                    seen.append(v)
            return [len(seen) == len(focus)] if name == "isDistinct" else seen

        return distinct
    if name == "toInteger" and n == 0:

        def to_integer(env: Env, focus: Coll) -> Coll:
            v = _single(focus)
            if isinstance(v, bool) or v is None:
                return [] if v is None else [int(v)]
            try:
                return [int(v)]
            except (TypeError, ValueError):
                return []

        return to_integer
    if name == "length" and n == 0:
        return lambda env, focus: [] if not focus else [len(str(_single(focus)))]
    if name == "descendants" and n == 0:
        return lambda env, focus: _descendants(focus)
    if name == "children" and n == 0:

        def children(env: Env, focus: Coll) -> Coll:
            out: Coll = []
            for item in focus:
                if isinstance(item, dict):
                    for key, v in item.items():
                        if key != "resourceType" and not key.startswith("_"):
                            _flatten_into(out, v)
            return out

        return children
    if name == "trace" and n >= 1:
        return lambda env, focus: focus
    if name == "extension" and n == 1:
        url = _literal_arg(raw, name)

        def extension(env: Env, focus: Coll) -> Coll:
            return [e for e in _child(focus, "extension") if isinstance(e, dict) and e.get("url") == url]

        return extension
    if name == "htmlChecks" and n == 0:

        def html(env: Env, focus: Coll) -> Coll:
            ok = bool(focus)
            for v in focus:
                key = ("htmlChecks", id(v))
                if key not in env.memo:
                    env.memo[key] = html_checks(v)
                ok = ok and env.memo[key]
            return [ok]

        return html
    if name == "resolve" and n == 0:
        return _resolve
    if name in ("memberOf", "conformsTo") and n == 1:
        url = _literal_arg(raw, name)
        if name == "memberOf":

            def member_of(env: Env, focus: Coll) -> Coll:
                if not focus or env.host is None:
                    return []
                return [env.host.member_of(_single(focus), url)]

            return member_of

        def conforms_to(env: Env, focus: Coll) -> Coll:
            if not focus or env.host is None:
                return []
            item = _single(focus)
            return [isinstance(item, dict) and env.host.conforms_to(item, url)]

        return conforms_to
    raise FhirPathUnsupported(f"function {name}() with {n} argument(s) is not supported")


def _lambda_fn(name: str, arg: Fn | None) -> Fn:
    if arg is None:  # exists()
        return lambda env, focus: [bool(focus)]
    if name == "where":

        def where(env: Env, focus: Coll) -> Coll:
            return [item for item in focus if to_bool(arg(env, [item])) is True]

        return where
    if name == "select":

        def select(env: Env, focus: Coll) -> Coll:
            out: Coll = []
            for item in focus:
                out.extend(arg(env, [item]))
            return out

        return select
    if name == "all":
        return lambda env, focus: [all(to_bool(arg(env, [item])) is True for item in focus)]

    def exists(env: Env, focus: Coll) -> Coll:
        return [any(to_bool(arg(env, [item])) is True for item in focus)]

    return exists


def _resolve(env: Env, focus: Coll) -> Coll:
    if env.host is None:
        return []
    out: Coll = []
    for item in focus:
        ref = item.get("reference") if isinstance(item, dict) else item
        if isinstance(ref, str):
            target = env.host.resolve(ref)
            if target is not None:
                out.append(target)
    return out


def compile_expression(expression: str) -> Fn:
    """Compile a FHIRPath expression into a function ``(env, focus) -> collection``.

    Raises :class:`FhirPathUnsupported` when the expression leaves the supported subset.
    """
    return _Parser(expression).parse()


def evaluate(fn: Fn, focus: Any, resource: Any, host: Host | None = None) -> Coll:
    """Evaluate a compiled expression with ``focus`` as the input (and ``%context``)."""
    return fn(Env(resource=resource, context=focus, host=host), [focus])
