"""What each map of a set reads and writes, and which fields seen in the set's cases nothing maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.mapping.compiler import CompiledMap
from bridge.mapping.registry import LoadedSet


@dataclass(frozen=True, slots=True)
class MapCoverage:
    name: str
    resource_type: str
    file: str
    reads: tuple[str, ...]  # record paths, absolute ("conditions[].severity")
    writes: tuple[str, ...]  # FHIR paths, relative to the resource


@dataclass(frozen=True, slots=True)
class Coverage:
    set_name: str
    maps: tuple[MapCoverage, ...]
    unmapped: tuple[str, ...]  # record paths present in the cases that no map reads
    seen: int  # distinct record paths present in the cases

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.set_name,
            "maps": [
                {
                    "name": m.name,
                    "resource": m.resource_type,
                    "file": m.file,
                    "reads": list(m.reads),
                    "writes": list(m.writes),
                }
                for m in self.maps
            ],
            "fields_seen_in_cases": self.seen,
            "unmapped_fields": list(self.unmapped),
        }


def _absolute(cmap: CompiledMap) -> set[str]:
    base = cmap.source
    out = set()
    extra = [cmap.key] + [key for key in _where_keys(cmap)]
    for read in [*cmap.reads, *extra]:
        out.add(read[2:] if read.startswith("$.") else f"{base}.{read}")
    return out


def _where_keys(cmap: CompiledMap) -> list[str]:
    return list(cmap.where_keys)


def _leaves(value: Any, path: str, out: set[str]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _leaves(sub, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list):
        for sub in value:
            _leaves(sub, f"{path}[]", out)
    else:
        out.add(path)


def _covered(leaf: str, reads: set[str]) -> bool:
    return any(leaf == r or leaf.startswith((r + ".", r + "[")) for r in reads)


def coverage(loaded: LoadedSet) -> Coverage:
    """The coverage report of a set: every map's reads and writes, and the case fields nothing reads."""
    ms = loaded.mappings
    maps = sorted(ms.maps + ms.bundle_maps, key=lambda m: (m.order, m.file, m.name))
    reads: set[str] = set()
    report = []
    for cmap in maps:
        absolute = _absolute(cmap)
        reads |= absolute
        report.append(
            MapCoverage(
                cmap.name, cmap.resource_type, cmap.file, tuple(sorted(absolute)), tuple(sorted(cmap.writes))
            )
        )
    seen: set[str] = set()
    cases = loaded.directory / "cases"
    if cases.is_dir():
        for path in sorted(cases.glob("*/municipal.json")):
            _leaves(json.loads(path.read_text(encoding="utf-8")), "", seen)
    seen.discard("format")  # the document kind, not data
    unmapped = tuple(sorted(leaf for leaf in seen if not _covered(leaf, reads)))
    return Coverage(loaded.name, tuple(report), unmapped, len(seen))
