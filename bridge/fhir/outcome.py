"""OperationOutcome: the one shape every problem report takes (API, CLI, validation, mapping)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]

#: FHIR issue-type codes used by the bridge (http://hl7.org/fhir/issue-type).
IssueCode = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "forbidden",
    "processing",
    "not-supported",
    "duplicate",
    "not-found",
    "too-long",
    "code-invalid",
    "business-rule",
    "conflict",
    "transient",
    "exception",
    "timeout",
    "throttled",
    "informational",
    "incomplete",
    "too-costly",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem, located by a FHIRPath-style (or JSON-path-style) expression."""

    severity: Severity
    code: IssueCode
    diagnostics: str
    expression: tuple[str, ...] = ()
    details: tuple[str, str] | None = None  # (system, code), e.g. MedCom error codes

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.details is not None:
            out["details"] = {"coding": [{"system": self.details[0], "code": self.details[1]}]}
        out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def error(diagnostics: str, *path: str, code: IssueCode = "invalid") -> Issue:
    """Shorthand for an error issue at ``path``."""
    return Issue("error", code, diagnostics, tuple(p for p in path if p))


def warning(diagnostics: str, *path: str, code: IssueCode = "informational") -> Issue:
    """Shorthand for a warning issue at ``path``."""
    return Issue("warning", code, diagnostics, tuple(p for p in path if p))


@dataclass(slots=True)
class Outcome:
    """An ordered collection of issues that renders as a FHIR OperationOutcome."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, issue: Issue) -> None:
        self.issues.append(issue)

    def extend(self, issues: Iterable[Issue]) -> None:
        self.issues.extend(issues)

    def __iter__(self) -> Iterator[Issue]:
        return iter(self.issues)

    def __len__(self) -> int:
        return len(self.issues)

    @property
    def has_errors(self) -> bool:
        return any(i.severity in ("error", "fatal") for i in self.issues)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    def to_fhir(self) -> dict[str, Any]:
        issues = [i.to_fhir() for i in self.issues] or [
            {"severity": "information", "code": "informational", "diagnostics": "No problems found"}
        ]
        return {"resourceType": "OperationOutcome", "issue": issues}

    def summary(self) -> str:
        """One line for a human: the first error and how many more there are."""
        errs = self.errors or self.issues
        if not errs:
            return "no problems"
        first = errs[0]
        where = f" at {first.expression[0]}" if first.expression else ""
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"{first.diagnostics}{where}{more}"
