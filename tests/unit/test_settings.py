"""The configuration model: the shipped example loads, and each kind of mistake is named with its path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.delivery.policy import RetryPolicy
from bridge.errors import InvalidInput
from bridge.settings import (
    check_settings,
    check_settings_file,
    hash_token,
    load_settings,
    parse_duration,
    parse_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bridge.yaml"
ENV = {
    "BRIDGE_CITIZEN_KEY_SECRET": "0123456789abcdef0123456789abcdef",
    "HERLEV_OUTBOUND_TOKEN": "outbound-secret",
}


def example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def problems(data: Any, environ: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(path, issue code, diagnostics) of every error."""
    settings, outcome = check_settings(data, ENV if environ is None else environ)
    found = [(i.expression[0] if i.expression else "", i.code, i.diagnostics) for i in outcome.errors]
    assert (settings is None) == bool(found)
    return found


def test_the_example_loads() -> None:
    settings = load_settings(EXAMPLE, ENV)

    assert [(s.id, s.kind, s.format) for s in settings.systems] == [
        ("herlev-gentofte-hospital", "hospital", "fhir"),
        ("herlev-municipality", "municipality", "fhir"),
        ("rehab-municipality", "municipality", "municipal-v1"),
    ]
    assert settings.store.url == "sqlite:///var/bridge.db"
    assert settings.store.citizen_key_secret.get_secret_value() == ENV["BRIDGE_CITIZEN_KEY_SECRET"]
    herlev = settings.system("herlev-municipality")
    assert herlev is not None and herlev.outbound.bearer_token is not None
    assert herlev.outbound.bearer_token.get_secret_value() == "outbound-secret"
    assert "outbound-secret" not in repr(settings) and ENV["BRIDGE_CITIZEN_KEY_SECRET"] not in repr(settings)
    assert settings.medcom.receipt_timeout == timedelta(minutes=30) and settings.medcom.max_resends == 2
    assert settings.routing[0].to == "admitted-hospital"
    for system in settings.systems:
        assert system.timeout < settings.dispatcher.lease
        assert system.endpoint.startswith("http://127.0.0.1:")


def test_the_example_tokens_in_its_comments_authenticate_their_systems() -> None:
    settings = load_settings(EXAMPLE, ENV)
    for token, system_id in [
        ("example-hospital-token-not-for-production", "herlev-gentofte-hospital"),
        ("example-herlev-token-not-for-production", "herlev-municipality"),
        ("example-rehab-token-not-for-production", "rehab-municipality"),
    ]:
        assert f"# token: {token}" in EXAMPLE.read_text(encoding="utf-8")
        found = settings.system_for_token(token)
        assert found is not None and found.id == system_id
    assert settings.system_for_token("example-hospital-token-not-for-productio") is None


def test_organisations_resolve_to_their_system() -> None:
    settings = load_settings(EXAMPLE, ENV)
    by_sor = settings.owner_of(sor="953741000016009")
    by_gln = settings.owner_of(gln="5790000209354")
    assert by_sor is not None and by_sor.id == "herlev-municipality"
    assert by_gln is not None and by_gln.id == "herlev-gentofte-hospital"
    assert settings.owner_of(sor="111111111111111") is None


def test_a_system_retry_policy_overrides_the_global_one_field_by_field() -> None:
    settings = load_settings(EXAMPLE, ENV)
    assert settings.retry_policy() == RetryPolicy(
        initial_delay=timedelta(seconds=2),
        multiplier=2,
        max_delay=timedelta(minutes=10),
        jitter="full",
        max_attempts=15,
        max_age=timedelta(hours=24),
    )
    herlev = settings.retry_policy("herlev-municipality")
    assert (herlev.max_delay, herlev.max_attempts) == (timedelta(minutes=5), 20)
    assert (herlev.initial_delay, herlev.max_age) == (timedelta(seconds=2), timedelta(hours=24))
    assert settings.retry_policy("rehab-municipality") == settings.retry_policy()


def test_unset_environment_variables_are_named_at_their_paths() -> None:
    assert problems(example(), environ={}) == [
        ("store.citizen_key_secret", "required", "environment variable BRIDGE_CITIZEN_KEY_SECRET is not set"),
        (
            "systems[1].outbound.bearer_token",
            "required",
            "environment variable HERLEV_OUTBOUND_TOKEN is not set",
        ),
    ]


def test_dollar_dollar_brace_is_a_literal() -> None:
    data = example()
    data["systems"][0]["name"] = "costs $${PRICE} and ${WHO}"
    settings = parse_settings(data, {**ENV, "WHO": "nobody"})
    assert settings.systems[0].name == "costs ${PRICE} and nobody"


Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """An edit that sets ``a.b[1].c`` in the example data."""

    def edit(data: dict[str, Any]) -> None:
        keys: list[str | int] = []
        for part in path.replace("]", "").split("."):
            name, *indexes = part.split("[")
            keys.append(name)
            keys.extend(int(i) for i in indexes)
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _delete(path: str, key: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path.split("."):
            name, *indexes = part.replace("]", "").split("[")
            target = target[name]
            for i in indexes:
                target = target[int(i)]
        del target[key]

    return edit


def _copy_system(index: int, **changes: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        system = copy.deepcopy(data["systems"][index])
        system.update(changes)
        data["systems"].append(system)

    return edit


MISTAKES: list[tuple[str, Edit, str, str, str]] = [
    ("unknown key", _set("systems[0].endpont", "x"), "systems[0].endpont", "structure", "unknown setting"),
    ("missing key", _delete("systems[0]", "kind"), "systems[0].kind", "required", "missing"),
    (
        "bad choice",
        _set("systems[2].format", "hl7v2"),
        "systems[2].format",
        "invalid",
        "unknown format 'hl7v2'",
    ),
    ("bad duration", _set("retry.max_delay", "ten minutes"), "retry.max_delay", "value", "not a duration"),
    ("negative duration", _set("systems[0].timeout", -1), "systems[0].timeout", "value", "negative"),
    (
        "bad SOR",
        _set("systems[0].organisations[0].sor", "12AB"),
        "systems[0].organisations[0].sor",
        "value",
        "SOR",
    ),
    (
        "bad GLN check digit",
        _set("systems[1].organisations[0].gln", "5790001348121"),
        "systems[1].organisations[0].gln",
        "value",
        "check digit",
    ),
    (
        "organisation without identifiers",
        _set("systems[1].organisations[0]", {"name": "Nameless"}),
        "systems[1].organisations[0]",
        "required",
        "sor or a gln",
    ),
    (
        "token not a sha256",
        _set("systems[0].inbound.tokens[0].sha256", "plain-text-token"),
        "systems[0].inbound.tokens[0].sha256",
        "value",
        "pattern",
    ),
    (
        "endpoint not http",
        _set("systems[1].endpoint", "ftp://127.0.0.1/x"),
        "systems[1].endpoint",
        "value",
        "http",
    ),
    ("bad system id", _set("systems[1].id", "Herlev Kommune"), "systems[1].id", "value", "pattern"),
    (
        "zero concurrency",
        _set("systems[0].concurrency", 0),
        "systems[0].concurrency",
        "value",
        "greater than",
    ),
    ("no systems", _set("systems", []), "systems", "value", "at least 1"),
    (
        "store url",
        _set("store.url", "mysql://db/bridge"),
        "store.url",
        "value",
        "sqlite:/// or postgresql://",
    ),
    ("sqlite url with host", _set("store.url", "sqlite://host/x.db"), "store.url", "value", "no host"),
    (
        "short secret",
        _set("store.citizen_key_secret", "short"),
        "store.citizen_key_secret",
        "value",
        "16 bytes",
    ),
    (
        "duplicate system id",
        _copy_system(1, organisations=[{"sor": "1267041000016006"}], inbound={"tokens": []}),
        "systems[3].id",
        "duplicate",
        "used twice",
    ),
    (
        "organisation owned twice",
        _copy_system(1, id="herlev-copy", inbound={"tokens": []}, organisations=[{"sor": "953741000016009"}]),
        "systems[3].organisations[0].sor",
        "duplicate",
        "already owned by system 'herlev-municipality'",
    ),
    (
        "token reused",
        _copy_system(1, id="herlev-copy", organisations=[{"sor": "1267041000016006"}]),
        "systems[3].inbound.tokens[0].sha256",
        "duplicate",
        "already accepted for system 'herlev-municipality'",
    ),
    (
        "hospital speaking municipal-v1",
        _set("systems[0].format", "municipal-v1"),
        "systems[0].format",
        "invalid",
        "only a municipality",
    ),
    (
        "timeout not below the lease",
        _set("systems[0].timeout", "5m"),
        "systems[0].timeout",
        "invariant",
        "lease",
    ),
    ("unsound global retry", _set("retry.max_delay", "1s"), "retry.max_delay", "invalid", "initial_delay"),
    (
        "unsound system retry",
        _set("systems[1].retry.max_attempts", 0),
        "systems[1].retry.max_attempts",
        "invalid",
        "at least 1",
    ),
    ("routing to nobody", _set("routing[0].to", ["nobody"]), "routing[0].to[0]", "not-found", "'nobody'"),
    (
        "routing from nobody",
        _set("routing[0].when.sender", "nobody"),
        "routing[0].when.sender",
        "not-found",
        "'nobody'",
    ),
    (
        "unknown message kind",
        _set("routing[0].when.kind", "letter"),
        "routing[0].when.kind",
        "value",
        "municipal",
    ),
    (
        "otherwise without admitted-hospital",
        lambda d: d["routing"][0].update(
            {"to": ["rehab-municipality"], "otherwise": ["herlev-municipality"]}
        ),
        "routing[0].otherwise",
        "invalid",
        "only applies",
    ),
    ("wrong version", _set("version", 2), "version", "value", "1"),
]


@pytest.mark.parametrize(("mistake", "edit", "path", "code", "words"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_named_with_its_path(
    mistake: str, edit: Edit, path: str, code: str, words: str
) -> None:
    data = example()
    edit(data)
    found = problems(data)
    assert len(found) == 1, found
    assert found[0][0] == path
    assert found[0][1] == code
    assert words in found[0][2]


def test_all_mistakes_are_reported_at_once() -> None:
    data = example()
    _set("systems[0].format", "municipal-v1")(data)
    _set("routing[0].to", ["nobody", "herlev-municipality", "ghost"])(data)
    _set("retry.max_delay", "1s")(data)
    paths = [p for p, _, _ in problems(data)]
    assert paths == ["retry.max_delay", "systems[0].format", "routing[0].to[0]", "routing[0].to[2]"]


def test_plain_http_to_a_remote_host_is_a_warning_not_an_error() -> None:
    data = example()
    data["systems"][1]["endpoint"] = "http://care.example.org/fhir"
    settings, outcome = check_settings(data, ENV)
    assert settings is not None
    assert [(i.severity, i.code, i.expression) for i in outcome.issues] == [
        ("warning", "security", ("systems[1].endpoint",))
    ]


def test_load_settings_raises_invalid_input_with_the_outcome(tmp_path: Path) -> None:
    data = example()
    _set("systems[0].concurrency", "many")(data)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InvalidInput) as raised:
        load_settings(path, ENV)
    assert [i.expression for i in raised.value.outcome.errors] == [("systems[0].concurrency",)]
    fhir = raised.value.outcome.to_fhir()
    assert fhir["resourceType"] == "OperationOutcome" and fhir["issue"][0]["severity"] == "error"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("version: 1\nsystems: [\n", "not valid YAML: line"),
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "must be a mapping"),
    ],
)
def test_broken_files_are_explained(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    settings, outcome = check_settings_file(path, ENV)
    assert settings is None
    assert words in outcome.errors[0].diagnostics


def test_a_missing_file_is_explained(tmp_path: Path) -> None:
    settings, outcome = check_settings_file(tmp_path / "absent.yaml", ENV)
    assert settings is None and "cannot read the configuration file" in outcome.errors[0].diagnostics


def test_duplicate_keys_deep_in_the_file_are_refused(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "    format: fhir\n", "    format: fhir\n    format: fhir\n", 1
    )
    path = tmp_path / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    _, outcome = check_settings_file(path, ENV)
    assert "duplicate key 'format'" in outcome.errors[0].diagnostics


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        ("PT30M", timedelta(minutes=30)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        (45, timedelta(seconds=45)),
        (1.5, timedelta(seconds=1.5)),
    ],
)
def test_durations(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "P", "soon", "5 minutes", "5x", True, None, -3, [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
