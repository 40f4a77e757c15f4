"""Golden cases of a mapping set: run them, diff FHIR the way FHIR means it, report (text or JUnit XML).

A case is a folder under ``<set>/cases/``::

    municipal.json   the document in the set's format
    fhir.json        the FHIR Bundle it translates to
    case.yaml        optional: description, direction (both | to-fhir | to-municipal),
                     ignore (FHIR paths not compared, e.g. Bundle.timestamp or Patient.id),
                     warnings (the paths FHIR -> municipal must report as not kept),
                     dropped (document paths the mapping leaves out on purpose; not compared)

For ``both`` (the default) the case checks municipal -> FHIR against ``fhir.json``, FHIR -> municipal
against ``municipal.json``, the round trip municipal -> FHIR -> municipal, and that the FHIR produced is
valid (FHIR R4 structure and the KL Gateway rules).

The FHIR diff matches Bundle entries by resource type and item id (not by position), compares references
by what they point at (so other ids do not matter), and treats repeating elements as unordered except
those whose order carries meaning (``given``, ``line``, ``prefix``, ``suffix``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import yaml

from bridge.errors import InvalidInput
from bridge.mapping.ids import item_id
from bridge.mapping.registry import LoadedSet, check_output

ORDERED = frozenset({"given", "line", "prefix", "suffix"})
_MISSING: Any = object()


@dataclass(slots=True)
class CaseResult:
    name: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    updated: bool = False

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class Case:
    name: str
    directory: Path
    direction: str
    ignore: frozenset[str]
    warnings: list[str] | None
    dropped: tuple[str, ...] = ()
    description: str = ""


def discover(loaded: LoadedSet) -> list[Case]:
    """The cases of a set, by folder name."""
    root = loaded.directory / "cases"
    if not root.is_dir():
        return []
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        options: dict[str, Any] = {}
        if (folder / "case.yaml").is_file():
            options = yaml.safe_load((folder / "case.yaml").read_text(encoding="utf-8")) or {}
        cases.append(
            Case(
                name=folder.name,
                directory=folder,
                direction=str(options.get("direction", "both")),
                ignore=frozenset(options.get("ignore", [])),
                warnings=options.get("warnings"),
                dropped=tuple(options.get("dropped", [])),
                description=str(options.get("description", "")),
            )
        )
    return cases


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_case(loaded: LoadedSet, case: Case, *, update: bool = False) -> CaseResult:
    """Run one case; with ``update``, rewrite the expected output (fhir.json, or municipal.json for a
    to-municipal case) instead of comparing it."""
    result = CaseResult(case.name)
    started = time.perf_counter()
    try:
        _run(loaded, case, result, update)
    except InvalidInput as exc:
        result.problems.extend(
            f"{i.expression[0] if i.expression else ''}: {i.diagnostics}" for i in exc.outcome
        )
    except (OSError, json.JSONDecodeError) as exc:
        result.problems.append(f"cannot read the case: {exc}")
    result.seconds = time.perf_counter() - started
    return result


def _run(loaded: LoadedSet, case: Case, result: CaseResult, update: bool) -> None:
    municipal_path, fhir_path = case.directory / "municipal.json", case.directory / "fhir.json"
    if case.direction in ("both", "to-fhir"):
        document = _load(municipal_path)
        produced = loaded.to_fhir(document)
        validity = check_output(produced)
        result.problems.extend(f"invalid FHIR at {i.expression[0]}: {i.diagnostics}" for i in validity.errors)
        if update:
            _write(fhir_path, produced)
            result.updated = True
        else:
            result.problems.extend(
                f"to FHIR: {p}" for p in diff_bundles(_load(fhir_path), produced, case.ignore)
            )
        if case.direction == "both":
            again, _ = loaded.to_municipal(produced)
            expected = _without(loaded.validate(document), case.dropped)
            result.problems.extend(f"round trip: {p}" for p in diff_json(expected, again))
    if case.direction in ("both", "to-municipal"):
        bundle = _load(fhir_path)
        document, outcome = loaded.to_municipal(bundle)
        got = sorted(i.expression[0] for i in outcome if i.expression)
        if case.warnings is not None and sorted(case.warnings) != got:
            result.problems.append(f"to municipal: expected warnings {sorted(case.warnings)}, got {got}")
        elif case.warnings is None and got:
            result.problems.append(f"to municipal: elements not kept: {got}")
        if update and case.direction == "to-municipal":
            _write(municipal_path, document)
            result.updated = True
        else:
            expected = _without(loaded.validate(_load(municipal_path)), case.dropped)
            result.problems.extend(f"to municipal: {p}" for p in diff_json(expected, document))


def _without(document: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    """A copy of a document without the given dotted paths (fields the mapping leaves out)."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    for path in dropped:
        *parents, last = path.split(".")
        node: Any = copy
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return copy


# ------------------------------------------------------------------------------------------ diffs
def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def diff_json(expected: Any, got: Any, path: str = "") -> list[str]:
    """Differences between two JSON values, by path; lists of objects with ``id`` match by id."""
    out: list[str] = []
    _diff(expected, got, path, out, {}, {}, ordered_all=False)
    return out


def _identity_maps(
    bundle: dict[str, Any],
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, tuple[str, str]]]:
    by_identity: dict[tuple[str, str], dict[str, Any]] = {}
    urls: dict[str, tuple[str, str]] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        key = item_id(resource) or ""
        ident = (str(resource.get("resourceType")), key)
        by_identity[ident] = resource
        if "fullUrl" in entry:
            urls[entry["fullUrl"]] = ident
        urls[f"{ident[0]}/{resource.get('id')}"] = ident
    return by_identity, urls


def diff_bundles(
    expected: dict[str, Any], got: dict[str, Any], ignore: frozenset[str] = frozenset()
) -> list[str]:
    """FHIR-aware differences between two Bundles (see the module docstring)."""
    out: list[str] = []
    exp_res, exp_urls = _identity_maps(expected)
    got_res, got_urls = _identity_maps(got)
    top_exp = {k: v for k, v in expected.items() if k != "entry" and f"Bundle.{k}" not in ignore}
    top_got = {k: v for k, v in got.items() if k != "entry" and f"Bundle.{k}" not in ignore}
    _diff(top_exp, top_got, "Bundle", out, exp_urls, got_urls, ordered_all=False, ignore=ignore)
    for ident in exp_res.keys() - got_res.keys():
        out.append(f"{ident[0]}[{ident[1]}]: missing")
    for ident in got_res.keys() - exp_res.keys():
        out.append(f"{ident[0]}[{ident[1]}]: not expected")
    for ident in sorted(exp_res.keys() & got_res.keys()):
        _diff(
            exp_res[ident],
            got_res[ident],
            f"{ident[0]}[{ident[1]}]",
            out,
            exp_urls,
            got_urls,
            ordered_all=False,
            ignore=ignore,
            rtype=ident[0],
        )
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _diff(
    expected: Any,
    got: Any,
    path: str,
    out: list[str],
    exp_urls: dict[str, tuple[str, str]],
    got_urls: dict[str, tuple[str, str]],
    *,
    ordered_all: bool,
    ignore: frozenset[str] = frozenset(),
    rtype: str = "",
    element: str = "",
) -> None:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(expected.keys() | got.keys()):
            if rtype and f"{rtype}.{key}" in ignore:
                continue
            if rtype and key in ("id",) and "ids" in ignore:
                continue
            sub = f"{path}.{key}"
            a, b = expected.get(key, _MISSING), got.get(key, _MISSING)
            if key == "reference" and isinstance(a, str) and isinstance(b, str):
                if a != b and exp_urls.get(a, a) != got_urls.get(b, b):
                    out.append(
                        f"{sub}: expected a reference to {exp_urls.get(a, a)}, got {got_urls.get(b, b)}"
                    )
                continue
            if a is _MISSING:
                out.append(f"{sub}: not expected ({_show(b)})")
            elif b is _MISSING:
                out.append(f"{sub}: missing (expected {_show(a)})")
            else:
                _diff(a, b, sub, out, exp_urls, got_urls, ordered_all=ordered_all, element=key)
        return
    if isinstance(expected, list) and isinstance(got, list):
        if element in ORDERED or ordered_all or not all(isinstance(x, dict) for x in expected + got):
            for i in range(max(len(expected), len(got))):
                a = expected[i] if i < len(expected) else _MISSING
                b = got[i] if i < len(got) else _MISSING
                if a is _MISSING:
                    out.append(f"{path}[{i}]: not expected ({_show(b)})")
                elif b is _MISSING:
                    out.append(f"{path}[{i}]: missing (expected {_show(a)})")
                else:
                    _diff(a, b, f"{path}[{i}]", out, exp_urls, got_urls, ordered_all=ordered_all)
            return
        # unordered: equal elements pair off; the rest pair by id, then by position
        remaining = list(range(len(got)))
        unmatched: list[int] = []
        for i, a in enumerate(expected):
            key = _canonical(a)
            j = next((j for j in remaining if _canonical(got[j]) == key), None)
            if j is None:
                unmatched.append(i)
            else:
                remaining.remove(j)
        for i in unmatched:
            a = expected[i]
            j = next((j for j in remaining if "id" in a and got[j].get("id") == a["id"]), None)
            if j is None and remaining:
                j = remaining[0]
            if j is None:
                out.append(f"{path}[{i}]: missing (expected {_show(a)})")
                continue
            remaining.remove(j)
            _diff(a, got[j], f"{path}[{i}]", out, exp_urls, got_urls, ordered_all=ordered_all)
        for j in remaining:
            out.append(f"{path}[+]: not expected ({_show(got[j])})")
        return
    if expected != got:
        out.append(f"{path}: expected {_show(expected)}, got {_show(got)}")


# ------------------------------------------------------------------------------------------ reports
def junit_xml(set_name: str, results: list[CaseResult]) -> bytes:
    """A JUnit XML report (one testsuite per mapping set) for CI systems."""
    suite = ElementTree.Element(
        "testsuite",
        name=f"mappings.{set_name}",
        tests=str(len(results)),
        failures=str(sum(not r.passed for r in results)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ElementTree.SubElement(
            suite, "testcase", classname=f"mappings.{set_name}", name=r.name, time=f"{r.seconds:.3f}"
        )
        if not r.passed:
            failure = ElementTree.SubElement(case, "failure", message=r.problems[0][:200])
            failure.text = "\n".join(r.problems)
    report: bytes = ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)
    return report
