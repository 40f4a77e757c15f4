"""Loading mapping specs: YAML or JSON files checked against the spec JSON Schema, with line numbers.

A malformed spec fails at load with the file, the line and key, and what is wrong - never later, on a
citizen's record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bridge.errors import MappingSpecError

#: Files in a mapping set folder that are not resource specs: the set's manifest and its input schema.
NOT_SPECS = frozenset({"mapping-set.yaml", "record.schema.json"})


@dataclass(frozen=True, slots=True)
class SpecFile:
    """One loaded spec: its data and where each key stands in the file."""

    name: str
    data: dict[str, Any]
    lines: dict[tuple[str | int, ...], int]

    def where(self, path: tuple[str | int, ...]) -> str:
        """'line N, key a.b[2].c' for an element path inside the spec."""
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top)"
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        return f"line {line}, key {key}" if line else f"key {key}"


@cache
def spec_schema() -> dict[str, Any]:
    """The JSON Schema every mapping spec must satisfy."""
    text = resources.files("bridge.mapping").joinpath("spec.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _to_python(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if not isinstance(key_node, yaml.ScalarNode)
                else (key_node.value)
            )
            key = str(key)
            if key in out:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            out[key] = _to_python(value_node, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines) for i, item in enumerate(node.value)]
    # scalars: let the safe constructor type them (int, bool, str ...)
    return yaml.safe_load(yaml.serialize(node))


def parse_spec_text(text: str, name: str) -> SpecFile:
    """Parse one spec's text (YAML, of which JSON is a subset) and check it against the schema."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise MappingSpecError(name, "line 1", "the spec is empty")
        data = _to_python(root, (), lines)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise MappingSpecError(name, f"line {line}", f"not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise MappingSpecError(name, "line ?", f"not valid YAML: {exc}") from exc
    spec = SpecFile(name, data, lines)
    validator = jsonschema.Draft202012Validator(spec_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        best = jsonschema.exceptions.best_match([errors[0]])
        where = tuple(best.absolute_path)
        if best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = set(best.schema.get("properties", {}))
            extra = sorted(k for k in best.instance if k not in allowed)
            if extra:  # point at the unexpected key itself
                where = (*where, extra[0])
        raise MappingSpecError(name, spec.where(where), best.message)
    return spec


def load_spec_file(path: Path) -> SpecFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingSpecError(path.name, "file", f"cannot read: {exc}") from exc
    return parse_spec_text(text, path.name)


def load_spec_dir(directory: Path) -> list[SpecFile]:
    """All ``*.yaml``, ``*.yml`` and ``*.json`` specs directly under ``directory``, by file name."""
    if not directory.is_dir():
        raise MappingSpecError(str(directory.name), "directory", "no such mappings directory")
    files = sorted(
        p
        for p in directory.iterdir()
        if p.suffix in {".yaml", ".yml", ".json"} and p.is_file() and p.name not in NOT_SPECS
    )
    if not files:
        raise MappingSpecError(directory.name, "directory", "holds no mapping specs (*.yaml)")
    return [load_spec_file(p) for p in files]
