"""Element paths, the one addressing language of mapping specs, compiled to getters and setters.

A path is a dot-separated list of steps, used on both sides (the record and the FHIR resource):

    name                a field
    name[0]             an element of a list, by position (created on write when missing)
    name[]              every element of a list (only in list rules)
    name[key=value]     the first list element whose ``key`` (itself a dotted path) equals ``value``;
                        on write, created with ``key`` set when missing. ``value`` may list alternatives
                        ``a|b``: the first is written, any is matched on read (e.g. both GLN system URIs).

Dots and brackets inside ``[...]`` belong to the selector, so URLs work as selector values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MISSING: Any = object()


class PathError(ValueError):
    """A path that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    index: int | None = None  # name[3]
    each: bool = False  # name[]
    key: tuple[str, ...] | None = None  # name[key.sub=...]
    values: tuple[str, ...] = ()  # alternatives; values[0] is written

    def __str__(self) -> str:
        if self.each:
            return f"{self.name}[]"
        if self.index is not None:
            return f"{self.name}[{self.index}]"
        if self.key is not None:
            return f"{self.name}[{'.'.join(self.key)}={'|'.join(self.values)}]"
        return self.name


def _split(path: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise PathError(f"unbalanced ']' in path {path!r}")
        if ch == "." and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise PathError(f"unbalanced '[' in path {path!r}")
    parts.append("".join(current))
    return parts


def parse(path: str) -> tuple[Step, ...]:
    """Parse a path; raises PathError naming what is wrong."""
    if not path or not isinstance(path, str):
        raise PathError("a path is a non-empty string")
    steps: list[Step] = []
    for part in _split(path):
        if not part:
            raise PathError(f"empty step in path {path!r}")
        if "[" not in part:
            if not part.replace("_", "a").replace("-", "a").isalnum():
                raise PathError(f"bad field name {part!r} in path {path!r}")
            steps.append(Step(part))
            continue
        name, _, rest = part.partition("[")
        if not rest.endswith("]") or not name:
            raise PathError(f"bad step {part!r} in path {path!r}")
        inner = rest[:-1]
        if inner == "":
            steps.append(Step(name, each=True))
        elif inner.isdigit():
            steps.append(Step(name, index=int(inner)))
        elif "=" in inner:
            key, _, value = inner.partition("=")
            if not key or not value:
                raise PathError(f"bad selector [{inner}] in path {path!r}")
            steps.append(Step(name, key=tuple(key.split(".")), values=tuple(value.split("|"))))
        else:
            raise PathError(f"bad selector [{inner}] in path {path!r}: use [N], [] or [key=value]")
    return tuple(steps)


def render(steps: tuple[Step, ...]) -> str:
    return ".".join(str(s) for s in steps)


def _get_plain(node: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(node, dict):
            return MISSING
        node = node.get(k, MISSING)
        if node is MISSING:
            return MISSING
    return node


def _match(items: list[Any], key: tuple[str, ...], values: tuple[str, ...]) -> tuple[int, Any]:
    for i, item in enumerate(items):
        if _get_plain(item, key) in values:
            return i, item
    return -1, MISSING


def _set_plain(node: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


Getter = Callable[[Any], Any]
Setter = Callable[[dict[str, Any], Any], None]
Locator = Callable[[Any], tuple[Any, str]]


def compile_getter(steps: tuple[Step, ...]) -> Getter:
    """A function returning the value at ``steps`` or MISSING. A trailing ``[]`` step returns the list."""
    if all(s.index is None and s.key is None and not s.each for s in steps):
        names = tuple(s.name for s in steps)
        if len(names) == 1:
            only = names[0]
            return lambda node: node.get(only, MISSING) if isinstance(node, dict) else MISSING
        return lambda node: _get_plain(node, names)

    def get(node: Any) -> Any:
        for step in steps:
            if not isinstance(node, dict):
                return MISSING
            node = node.get(step.name, MISSING)
            if node is MISSING:
                return MISSING
            if step.index is not None:
                if not isinstance(node, list) or step.index >= len(node):
                    return MISSING
                node = node[step.index]
            elif step.key is not None:
                if not isinstance(node, list):
                    return MISSING
                node = _match(node, step.key, step.values)[1]
                if node is MISSING:
                    return MISSING
        return node

    return get


def compile_locator(steps: tuple[Step, ...]) -> Locator:
    """Like a getter, but also returns the concrete path (selectors resolved to positions)."""

    def locate(node: Any) -> tuple[Any, str]:
        where: list[str] = []
        for step in steps:
            if not isinstance(node, dict):
                return MISSING, ".".join(where)
            node = node.get(step.name, MISSING)
            if node is MISSING:
                return MISSING, ".".join(where)
            if step.index is not None:
                if not isinstance(node, list) or step.index >= len(node):
                    return MISSING, ".".join(where)
                node = node[step.index]
                where.append(f"{step.name}[{step.index}]")
            elif step.key is not None:
                if not isinstance(node, list):
                    return MISSING, ".".join(where)
                i, node = _match(node, step.key, step.values)
                if node is MISSING:
                    return MISSING, ".".join(where)
                where.append(f"{step.name}[{i}]")
            else:
                where.append(step.name)
        return node, ".".join(where)

    return locate


def compile_setter(steps: tuple[Step, ...]) -> Setter:
    """A function writing a value at ``steps``, creating containers and selected elements on the way."""
    if any(s.each for s in steps):
        raise PathError(f"cannot write through '[]' in {render(steps)!r}; use a list rule")
    if all(s.index is None and s.key is None for s in steps):
        names = tuple(s.name for s in steps)
        if len(names) == 1:
            only = names[0]

            def set_one(node: dict[str, Any], value: Any) -> None:
                node[only] = value

            return set_one
        return lambda node, value: _set_plain(node, names, value)

    last = steps[-1]
    if last.key is not None:
        raise PathError(f"a path cannot end in a selector: {render(steps)!r}")
    descenders = tuple(_descender(step) for step in steps[:-1])
    name = last.name
    if last.index is None:

        def set_field(node: dict[str, Any], value: Any) -> None:
            for down in descenders:
                node = down(node)
            node[name] = value

        return set_field
    index = last.index

    def set_item(node: dict[str, Any], value: Any) -> None:
        for down in descenders:
            node = down(node)
        items = node.get(name)
        if not isinstance(items, list):
            items = node[name] = []
        while len(items) <= index:
            items.append(None)
        items[index] = value

    return set_item


def _descender(step: Step) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One step of a write: return the child container, creating it when missing."""
    name = step.name
    if step.index is None and step.key is None:

        def field(node: dict[str, Any]) -> dict[str, Any]:
            child = node.get(name)
            if child.__class__ is not dict:
                child = node[name] = {}
            return child

        return field
    if step.index is not None:
        index = step.index

        def item(node: dict[str, Any]) -> dict[str, Any]:
            items = node.get(name)
            if items.__class__ is not list:
                items = node[name] = []
            assert isinstance(items, list)
            while len(items) <= index:
                items.append({})
            found: dict[str, Any] = items[index]
            return found

        return item
    key, values = step.key, step.values
    assert key is not None

    def select(node: dict[str, Any]) -> dict[str, Any]:
        items = node.get(name)
        if items.__class__ is not list:
            items = node[name] = []
        assert isinstance(items, list)
        _, match = _match(items, key, values)
        if match is MISSING:
            match = {}
            _set_plain(match, key, values[0])
            items.append(match)
        result: dict[str, Any] = match
        return result

    return select
