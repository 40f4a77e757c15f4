"""The state of one message's validation: its resources by reference, locations, results so far.

A :class:`Run` is what compiled profiles and invariants ask about the message: ``resolve()`` inside
the Bundle, ``memberOf`` a shipped value set, ``conformsTo`` a shipped profile (each resource is
checked against a profile once per run, whoever asks first).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from bridge.fhir.outcome import Issue
from bridge.medcom.validation import fhirpath
from bridge.medcom.validation.profile import Invariant, check_root, compile_profile
from bridge.medcom.validation.terminology import (
    profile_by_name,
    shipped_version,
    structure_definition,
    value_set_by_name,
)


def _as_list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (absent, or wrongly a scalar) as empty."""
    return value if isinstance(value, list) else []


@cache
def _allowed_targets(targets: tuple[str, ...]) -> dict[str, list[str]]:
    """The resource types a Reference's target profiles allow, each with its shipped profiles.

    Compiled once per tuple of target profiles; callers must not change the result.
    """
    allowed: dict[str, list[str]] = {}
    for url in targets:
        sd = structure_definition(url)
        rt = sd.get("type") if sd is not None else url.rsplit("/", 1)[-1]
        allowed.setdefault(str(rt), [])
        if sd is not None:
            allowed[str(rt)].append(url)
    return allowed


_TRUE = [True]  # an invariant holds when it evaluates to this (never changed)


class Run:
    """Validation state for one Bundle; implements :class:`fhirpath.Host`."""

    def __init__(self, bundle: dict[str, Any], pins: dict[str, str] | None = None) -> None:
        self.bundle = bundle
        self.issues: list[Issue] = []
        self._errors = 0  # issues of severity error or fatal in self.issues
        self._pins = pins or {}
        self._capped: list[str] = []
        self._seen: set[tuple[str, tuple[str, ...]]] = set()
        self._by_ref: dict[str, dict[str, Any]] = {}
        self._paths: dict[int, str] = {id(bundle): "Bundle"}
        self._checked: dict[tuple[int, str], bool] = {}
        self._base_done: set[tuple[int, str]] = set()
        self._env = fhirpath.Env(resource=None, context=None, host=self)
        entries = bundle.get("entry")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            self._paths[id(resource)] = f"Bundle.entry[{i}].resource"
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str):
                self._by_ref.setdefault(full_url, resource)
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                self._by_ref.setdefault(f"{rtype}/{rid}", resource)

    # -- reporting --------------------------------------------------------------------------------

    def add(self, issue: Issue) -> None:
        """Record an issue once (the same problem found by two profiles is reported once).

        While a profile runs that the message's own IG pins to another version than the one shipped,
        its errors are reported as warnings: the sender met the version it was built for.
        """
        if self._capped and issue.severity in ("error", "fatal"):
            url = self._capped[-1]
            issue = Issue(
                "warning",
                issue.code,
                f"{issue.diagnostics} [checked against {url.rsplit('/', 1)[-1]} {shipped_version(url)}; "
                f"the message's implementation guide pins version {self._pins[url]}]",
                issue.expression,
                issue.details,
            )
        key = (issue.diagnostics, issue.expression)
        if key not in self._seen:
            self._seen.add(key)
            self.issues.append(issue)
            if issue.severity in ("error", "fatal"):
                self._errors += 1

    def error_count(self) -> int:
        return self._errors

    # -- Host -------------------------------------------------------------------------------------

    def resolve(self, reference: str) -> dict[str, Any] | None:
        """The Bundle entry a reference points to: by fullUrl, else by ``Type/id``."""
        found = self._by_ref.get(reference)
        if found is None and "/" in reference and not reference.startswith("#"):
            parts = reference.split("/")
            if len(parts) >= 2:
                found = self._by_ref.get(f"{parts[-2]}/{parts[-1]}")
                if found is None and len(parts) >= 4 and parts[-2] == "_history":
                    found = self._by_ref.get(f"{parts[-4]}/{parts[-3]}")
        return found

    def member_of(self, item: Any, valueset_url: str) -> bool:
        codes = value_set_by_name(valueset_url)
        if codes is None:
            return True  # a value set the product does not ship cannot be held against the sender
        if isinstance(item, str):
            return codes.has_code(item)
        if isinstance(item, dict):
            if "coding" in item:
                return any(
                    isinstance(c, dict) and codes.has_coding(c.get("system"), c.get("code"))
                    for c in _as_list(item.get("coding"))
                )
            return codes.has_coding(item.get("system"), item.get("code"))
        return False

    def conforms_to(self, resource: dict[str, Any], profile_url: str) -> bool:
        url = profile_by_name(profile_url)
        if url is None:
            return True
        return self.check_profile(resource, url)

    # -- profiles ---------------------------------------------------------------------------------

    def path_of(self, resource: dict[str, Any]) -> str:
        return self._paths.get(id(resource), "Bundle")

    def check_profile(self, resource: dict[str, Any], url: str) -> bool:
        """Check ``resource`` against a shipped profile once per run; True when it adds no errors."""
        key = (id(resource), url)
        done = self._checked.get(key)
        if done is not None:
            return done
        self._checked[key] = True  # guards against cycles through references
        root = compile_profile(url)
        if root is None:
            return True
        capped = url in self._pins
        if capped:
            self._capped.append(url)
        before = self.error_count()
        try:
            check_root(root, resource, self.path_of(resource), self, resource)
        finally:
            if capped:
                self._capped.pop()
        ok = self.error_count() == before
        self._checked[key] = ok
        return ok

    def check_type_profile(self, url: str, value: dict[str, Any], path: str, resource: Any) -> None:
        """Check a data type value (an extension, an Identifier) against its type profile."""
        root = compile_profile(url)
        if root is None:
            return
        capped = url in self._pins
        if capped:
            self._capped.append(url)
        try:
            check_root(root, value, path, self, resource)
        finally:
            if capped:
                self._capped.pop()

    def check_reference_target(self, reference: dict[str, Any], targets: tuple[str, ...], path: str) -> None:
        """A Reference with target profiles: the resolved resource has an allowed type and conforms."""
        ref = reference.get("reference")
        if not isinstance(ref, str):
            return
        target = self.resolve(ref)
        if target is None:
            return  # unresolved references are the 'references-resolve' rule's finding
        rtype = str(target.get("resourceType"))
        allowed = _allowed_targets(targets)
        if rtype not in allowed:
            self.add(
                Issue(
                    "error",
                    "structure",
                    f"the reference must point to {' or '.join(sorted(allowed))}, not {rtype}",
                    (f"{path}.reference",),
                )
            )
            return
        for url in allowed[str(rtype)]:
            self.check_profile(target, url)

    def check_invariants(self, invariants: Sequence[Invariant], value: Any, path: str, resource: Any) -> None:
        """Evaluate an element's invariants in order with ``value`` as focus; base invariants once
        per element."""
        env = self._env
        base_done = self._base_done
        for inv in invariants:
            if inv.base:
                key = (id(value), inv.key)
                if key in base_done:
                    continue
                base_done.add(key)
            # set for each invariant: a host function (conformsTo) may have run other invariants
            env.resource, env.context = resource, value
            try:
                ok = inv.fn(env, [value]) == _TRUE
            except fhirpath.FhirPathError as exc:
                self.add(
                    Issue(
                        "warning",
                        "processing",
                        f"{inv.key}: the invariant could not be evaluated ({exc})",
                        (path,),
                    )
                )
                continue
            if not ok:
                self._invariant_failed(inv, path)

    def _invariant_failed(self, inv: Invariant, path: str) -> None:
        if inv.severity == "warning":
            self.add(Issue("warning", "invariant", f"{inv.key}: {inv.human}", (path,)))
        else:
            self.add(Issue("error", "invariant", f"{inv.key}: {inv.human}", (path,)))
