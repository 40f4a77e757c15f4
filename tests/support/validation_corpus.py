"""A deterministic corpus of MedCom messages and the validator's outcome for each, frozen as a fixture.

The corpus is every official example Bundle under ``../shared/medcom`` (valid or not, MedCom message
or not), each as it is, without ``meta`` (recognised by its event alone), and in
:data:`MUTANTS_PER_EXAMPLE` damaged copies. Each copy gets one to three damages chosen by a
``random.Random`` seeded with the example's name and the copy's number, so the corpus is the same on
every machine and every run: a required element dropped, a code or system changed, a reference broken
or pointed at the wrong resource, a value of the wrong JSON type, an extra element (unknown, a second
choice type, a repeated item), entries swapped or repeated, or a resource replaced by an official
example resource of the same type.

``python tests/support/validation_corpus.py`` records the outcomes of the validator as it is into
:data:`FIXTURE`; ``test_validation_equivalence.py`` asserts that the validator still gives exactly
those outcomes (the same issues, in the same order). Record only when a change of outcome is meant.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
MEDCOM = TESTS.parents[1] / "shared" / "medcom"
FIXTURE = TESTS / "fixtures" / "medcom" / "validation-outcomes.json"  # apart from the municipal records
MUTANTS_PER_EXAMPLE = 40

Bundle = dict[str, Any]
Step = tuple[Any, ...]
Record = list[Any]  # [severity, code, diagnostics, [expression...], [system, code] | None]


def examples() -> list[Path]:
    """Every example Bundle under the shared MedCom data, in a fixed order."""
    found = [*MEDCOM.rglob("Bundle-*.json"), *MEDCOM.rglob("Binary-Ack-*.json")]
    return sorted(found, key=lambda p: p.relative_to(MEDCOM).as_posix())


def resources() -> dict[str, list[dict[str, Any]]]:
    """Official single-resource examples (core, messaging) by resource type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for folder in ("core", "messaging"):
        for path in sorted((MEDCOM / folder).glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("resourceType") not in (None, "Bundle"):
                by_type.setdefault(str(data["resourceType"]), []).append(data)
    return by_type


# ---- where a damage can land -------------------------------------------------------------------


def _sites(node: Any, prefix: Step = ()) -> list[Step]:
    out: list[Step] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_sites(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(_sites(v, (*prefix, i)))
    return out


def _get(root: Any, path: Step) -> Any:
    for step in path:
        root = root[step]
    return root


def _keyed(bundle: Bundle, keys: frozenset[str]) -> list[Step]:
    return [p for p in _sites(bundle) if p and p[-1] in keys]


_JUNK: tuple[Any, ...] = (
    None,
    True,
    0,
    -3,
    1.5,
    "",
    "x",
    " padded ",
    "2022-13-01",
    "urn:uuid:not-a-uuid",
    [],
    {},
    [1],
    {"a": 1},
    [{}],
)


def drop(bundle: Bundle, rnd: random.Random) -> None:
    """Remove an element or an item of an array."""
    sites = _sites(bundle)
    path = rnd.choice(sites)
    parent = _get(bundle, path[:-1])
    del parent[path[-1]]


def drop_required_looking(bundle: Bundle, rnd: random.Random) -> None:
    """Remove an element profiles often require (identifier, status, code, system, url, ...)."""
    sites = _keyed(
        bundle,
        frozenset(
            {"identifier", "status", "code", "system", "url", "reference", "resource", "fullUrl", "class"}
            | {"eventCoding", "sender", "destination", "focus", "subject", "period", "target", "activity"}
            | {"name", "value", "coding", "extension", "definition", "source", "category", "payload"}
        ),
    )
    if sites:
        path = rnd.choice(sites)
        del _get(bundle, path[:-1])[path[-1]]


def retype(bundle: Bundle, rnd: random.Random) -> None:
    """Replace a value by one of another JSON type (or a malformed primitive)."""
    path = rnd.choice(_sites(bundle))
    _get(bundle, path[:-1])[path[-1]] = copy.deepcopy(rnd.choice(_JUNK))


def recode(bundle: Bundle, rnd: random.Random) -> None:
    """Change a code, system, status or url: another one from the message, or a made-up one."""
    keys = frozenset({"code", "system", "status", "use", "url", "profile", "definition", "type", "class"})
    sites = [p for p in _keyed(bundle, keys) if isinstance(_get(bundle, p), str)]
    if not sites:
        return
    path = rnd.choice(sites)
    old = _get(bundle, path)
    others = sorted({_get(bundle, p) for p in sites if p[-1] == path[-1]} - {old})
    choice = rnd.randrange(4)
    if choice == 0 and others:
        new = rnd.choice(others)
    elif choice == 1:
        new = "no-such-" + old
    elif choice == 2:
        new = old.upper()
    else:
        new = old + "|9.9.9" if "/" in old else old + " "
    _get(bundle, path[:-1])[path[-1]] = new


def break_reference(bundle: Bundle, rnd: random.Random) -> None:
    """Point a reference nowhere, at another resource of the message, or make it malformed."""
    sites = [p for p in _keyed(bundle, frozenset({"reference"})) if isinstance(_get(bundle, p), str)]
    if not sites:
        return
    path = rnd.choice(sites)
    targets: list[str] = []
    for entry in bundle.get("entry", []) if isinstance(bundle.get("entry"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str):
            targets.append(entry["fullUrl"])
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and "id" in resource:
            targets.append(f"{resource.get('resourceType')}/{resource['id']}")
    choices = ["Patient/unknown", "Organization/not-here", "#contained", "", "urn:uuid:0", *targets]
    _get(bundle, path[:-1])[path[-1]] = rnd.choice(choices)


def extra(bundle: Bundle, rnd: random.Random) -> None:
    """Add an element: unknown, a second choice type, an id, or a repeated array item."""
    dicts = [p for p in [(), *_sites(bundle)] if isinstance(_get(bundle, p), dict)]
    lists = [p for p in _sites(bundle) if isinstance(_get(bundle, p), list) and _get(bundle, p)]
    choice = rnd.randrange(4)
    if choice == 0 and lists:
        items = _get(bundle, rnd.choice(lists))
        items.append(copy.deepcopy(rnd.choice(items)))
        return
    target = _get(bundle, rnd.choice(dicts))
    if choice == 1:
        target["favouriteColour"] = "blue"
    elif choice == 2:
        target["valueString" if "valueString" not in target else "valueCode"] = "extra"
    else:
        target["id"] = rnd.choice(["extra-id", "", "not valid id!", 7])


def shuffle_entries(bundle: Bundle, rnd: random.Random) -> None:
    """Swap two entries, repeat one, or drop one."""
    entries = bundle.get("entry")
    if not isinstance(entries, list) or len(entries) < 2:
        return
    i, j = rnd.sample(range(len(entries)), 2)
    choice = rnd.randrange(3)
    if choice == 0:
        entries[i], entries[j] = entries[j], entries[i]
    elif choice == 1:
        entries.append(copy.deepcopy(entries[i]))
    else:
        del entries[i]


def recognition(bundle: Bundle, rnd: random.Random) -> None:
    """Change what the message says it is: its profile, its event code, or its Bundle type."""
    choice = rnd.randrange(3)
    if choice == 0:
        bundle.pop("meta", None)
    elif choice == 1:
        for entry in bundle.get("entry", []) if isinstance(bundle.get("entry"), list) else []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and isinstance(resource.get("eventCoding"), dict):
                resource["eventCoding"]["code"] = rnd.choice(
                    ["hospital-notification-message", "care-communication-message", "acknowledgement-message"]
                )
                return
    else:
        bundle["type"] = rnd.choice(["collection", "document", "message"])


def transplant(bundle: Bundle, rnd: random.Random, pool: dict[str, list[dict[str, Any]]]) -> None:
    """Replace an entry's resource by an official example resource of the same type, or add one."""
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        return
    i = rnd.randrange(len(entries))
    resource = entries[i].get("resource") if isinstance(entries[i], dict) else None
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    same = pool.get(str(rtype), [])
    if same and rnd.randrange(2) == 0:
        entries[i]["resource"] = copy.deepcopy(rnd.choice(same))
    else:
        other = copy.deepcopy(rnd.choice(pool[rnd.choice(sorted(pool))]))
        entries.append({"fullUrl": f"{other['resourceType']}/{other['id']}", "resource": other})


Damage = Callable[[Bundle, random.Random], None]
DAMAGES: tuple[Damage, ...] = (
    drop,
    drop_required_looking,
    retype,
    recode,
    break_reference,
    extra,
    shuffle_entries,
    recognition,
)


def mutant(original: Bundle, seed: str, pool: dict[str, list[dict[str, Any]]]) -> Bundle:
    """A copy of ``original`` with one to three damages chosen by ``seed``."""
    rnd = random.Random(seed)
    bundle = copy.deepcopy(original)
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        n = rnd.randrange(len(DAMAGES) + 1)
        try:
            if n == len(DAMAGES):
                transplant(bundle, rnd, pool)
            else:
                DAMAGES[n](bundle, rnd)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier damage removed what this one needed: the copy stays as it is
    return bundle


def name_of(example: Path) -> str:
    """The example's name in the corpus: its path under the shared MedCom folder."""
    return example.relative_to(MEDCOM).as_posix()


def messages_of(example: Path, pool: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, Any]]:
    """(name, message) for one example, its copy without ``meta``, and its damaged copies."""
    name = name_of(example)
    original = json.loads(example.read_text(encoding="utf-8"))
    yield name, original
    bare = copy.deepcopy(original)
    bare.pop("meta", None)
    yield f"{name}#no-meta", bare
    for n in range(MUTANTS_PER_EXAMPLE):
        yield f"{name}#{n}", mutant(original, f"{name}#{n}", pool)


def corpus() -> Iterator[tuple[str, Any]]:
    """(name, message) for every message of the corpus."""
    pool = resources()
    for example in examples():
        yield from messages_of(example, pool)


def outcome_record(outcome: Any) -> list[Record]:
    """The issues of an Outcome as plain JSON: severity, code, diagnostics, expression, details."""
    return [
        [i.severity, i.code, i.diagnostics, list(i.expression), list(i.details) if i.details else None]
        for i in outcome.issues
    ]


def outcomes() -> dict[str, list[Record]]:
    """The current validator's outcome for every message of the corpus."""
    from bridge.medcom.validation import validate_message

    return {name: outcome_record(validate_message(message)) for name, message in corpus()}


def main() -> None:
    sys.path.insert(0, str(TESTS.parent))
    found = outcomes()
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in found.items())
    FIXTURE.write_text("{\n" + lines + "\n}\n", encoding="utf-8")
    issues = sum(len(v) for v in found.values())
    print(f"{len(found)} messages, {issues} issues -> {FIXTURE.relative_to(TESTS.parent)}")


if __name__ == "__main__":
    main()
