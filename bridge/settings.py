"""The bridge's configuration: one YAML file, validated, with secrets taken from the environment.

Secrets: any string value may hold ``${NAME}``; it is replaced by the environment variable ``NAME``
before validation (``$${`` writes a literal ``${``). Explicit expansion instead of pydantic-settings'
``BRIDGE_SYSTEMS__0__...`` variables: the file shows where every secret comes from, list entries
(systems) need no positional variable names, and a missing variable is reported at the path that
needs it. Expansion works on the parsed YAML tree, so a secret can never inject YAML structure.

Every problem is reported at once, each with its path (``systems[1].endpoint``), as an ``Outcome``:
``check_settings`` returns it (warnings included) for ``fhir-bridge config check``; ``load_settings``
raises ``InvalidInput`` carrying it. Tests and tools build settings from a dict with
``parse_settings(data, environ={...})`` - no patching of ``os.environ``.

Durations are written ``250ms``, ``30s``, ``5m``, ``2h``, ``7d`` (combinable: ``1h30m``), as ISO 8601
(``PT30M``) or as a number of seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from bridge.errors import InvalidInput
from bridge.fhir.identifiers import check_gln, check_sor
from bridge.fhir.outcome import Issue, IssueCode, Outcome, error, warning
from bridge.outbox.keys import MIN_SECRET_BYTES

if TYPE_CHECKING:
    from bridge.delivery.policy import RetryPolicy

# bridge.delivery.policy is imported where it is used: importing the bridge.delivery package loads
# the dispatcher, which needs these settings - a cycle when this module is imported first.

#: Message kinds a routing rule can match (the ingress classifies each message as one of these).
MESSAGE_KINDS = (
    "hospital-notification",
    "care-communication",
    "acknowledgement",
    "home-care-observation",
    "municipal-record",
)
#: The routing target meaning "the hospital where the citizen is admitted right now".
ADMITTED_HOSPITAL = "admitted-hospital"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(value: object) -> timedelta:
    """``30s``, ``1h30m``, ``PT30M`` or a number of seconds as a ``timedelta`` (never negative)."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 5m, 2h")
    elif isinstance(value, int | float):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip()
        iso = _ISO_DURATION.match(text)
        if iso and text != "P":
            days, hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
            result = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        elif text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
            result = timedelta(seconds=seconds)
        else:
            raise ValueError(f"{value!r} is not a duration; write e.g. 250ms, 30s, 5m, 2h, 7d or PT30M")
    else:
        raise ValueError("a duration is a number of seconds or text like 30s, 5m, 2h")
    if result < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return result


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
SystemId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in the configuration for an inbound bearer token.

    A fast hash is enough: tokens are long random strings, not passwords, so there is no small
    space to search.
    """
    return hashlib.sha256(token.encode()).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Model):
    """Where the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    #: API processes sharing the listening socket (``bridge.supervisor``): validation is CPU-bound, so
    #: one process per core lets the bridge accept on every core. The dispatcher runs in the first.
    processes: int = Field(default=1, ge=1, le=64)


class StoreConfig(_Model):
    """The outbox database and the secret that keys citizen hashes."""

    url: str = "sqlite:///var/bridge.db"
    citizen_key_secret: SecretStr
    #: Encryption at rest of stored payloads (``bridge.outbox.encryption``): ``id=base64key,...``, the
    #: first key seals; write ``${BRIDGE_PAYLOAD_KEYS}`` so the keys stay in the environment.
    payload_keys: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str) -> str:
        scheme = url.split(":", 1)[0] if ":" in url else ""
        if scheme == "sqlite":
            from bridge.outbox.sqlite import sqlite_path_from_url

            sqlite_path_from_url(url)  # raises ValueError naming the problem
        elif scheme not in ("postgresql", "postgres"):
            raise ValueError("the store URL must start with sqlite:/// or postgresql://")
        return url

    @field_validator("payload_keys")
    @classmethod
    def _keys_readable(cls, keys: SecretStr | None) -> SecretStr | None:
        if keys is not None:
            from bridge.outbox.encryption import PayloadKeys

            PayloadKeys.parse(keys.get_secret_value())  # raises ValueError naming the problem, not a key
        return keys

    @field_validator("citizen_key_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
        return secret


class RetryConfig(_Model):
    """The global retry policy for transient delivery failures."""

    initial_delay: Duration = timedelta(seconds=2)
    multiplier: float = 2.0
    max_delay: Duration = timedelta(minutes=10)
    jitter: Literal["full", "none"] = "full"
    max_attempts: int = 15
    max_age: Duration = timedelta(hours=24)


class RetryOverride(_Model):
    """A system's own retry policy: any field left out comes from the global one."""

    initial_delay: Duration | None = None
    multiplier: float | None = None
    max_delay: Duration | None = None
    jitter: Literal["full", "none"] | None = None
    max_attempts: int | None = None
    max_age: Duration | None = None


class MedcomConfig(_Model):
    """MedCom reliable messaging: when to resend a message whose Acknowledgement has not come.

    MedCom's texts disagree (resend after 30 minutes MAY vs SHALL; at most 2 vs 3 resends), so both
    numbers are settings; the defaults follow the reliable-messaging rules for FHIR (30 min, 2).
    """

    receipt_timeout: Duration = timedelta(minutes=30)
    max_resends: int = Field(default=2, ge=0, le=10)


class DispatcherConfig(_Model):
    """How workers claim and hold deliveries."""

    lease: Duration = timedelta(seconds=120)
    poll_interval: Duration = timedelta(seconds=1)
    batch_size: int = Field(default=16, ge=1, le=1000)
    shutdown_grace: Duration = timedelta(seconds=30)


class RetentionConfig(_Model):
    """Data minimisation (``bridge.retention``): how long delivered payloads are kept (``null``: for ever),
    and how often the worker purges."""

    payloads: Duration | None = timedelta(days=30)
    interval: Duration = timedelta(hours=1)


class Limits(_Model):
    """Bounds on what a caller may send."""

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_depth: int = Field(default=64, ge=4, le=1000)
    #: A body must arrive within this time, however slowly it trickles (slow clients hold a connection).
    body_timeout: Duration = timedelta(seconds=30)
    header_timeout: Duration = timedelta(seconds=10)  # the first request's headers, from the connection


class Organisation(_Model):
    """An organisation a system speaks for, by SOR code and/or GLN (EAN location number)."""

    name: str | None = None
    sor: str | None = None
    gln: str | None = None

    @field_validator("sor")
    @classmethod
    def _sor(cls, value: str | None) -> str | None:
        problem = None if value is None else check_sor(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("gln")
    @classmethod
    def _gln(cls, value: str | None) -> str | None:
        problem = None if value is None else check_gln(value)
        if problem:
            raise ValueError(problem)
        return value


class InboundToken(_Model):
    """A bearer token the system may call the bridge with, stored as its SHA-256 hex digest."""

    name: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ClientCert(_Model):
    """A client certificate that identifies a caller under mutual TLS, by its subject or its thumbprint.

    ``subject`` is the RFC 4514 form (``CN=ehr.example,O=Region``) and is only as strong as the CA that
    signs client certificates; ``sha256`` (hex of the DER certificate, colons allowed) names one
    certificate exactly and must be updated when it is renewed.
    """

    subject: str | None = Field(default=None, min_length=1)
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _thumbprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.replace(":", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("a SHA-256 thumbprint is 64 hex digits (colons allowed)")
        return digest


class Inbound(_Model):
    """How a system authenticates when it calls the bridge: hashed bearer tokens, JWT bearer tokens whose
    ``client_id`` (or ``sub``) is listed in ``jwt_subjects``, or a client certificate in ``client_certs``."""

    tokens: list[InboundToken] = []
    jwt_subjects: list[Annotated[str, Field(min_length=1)]] = []
    client_certs: list[ClientCert] = []


class Outbound(_Model):
    """Credentials the bridge presents when it delivers to the system (write ``${ENV_NAME}``)."""

    bearer_token: SecretStr | None = None


class System(_Model):
    """A hospital EHR or municipal care system the bridge exchanges messages with."""

    id: SystemId
    kind: Literal["hospital", "municipality"]
    name: str | None = None
    organisations: list[Organisation] = Field(min_length=1)
    inbound: Inbound = Inbound()
    endpoint: str
    format: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")] = Field(
        default="fhir",
        description="fhir (MedCom messages, FHIR Bundles) or the name of a mapping set under the "
        "mappings folder (municipal-v1, borgerjournal-v1, ...)",
    )
    outbound: Outbound = Outbound()
    timeout: Duration = timedelta(seconds=30)
    concurrency: int = Field(default=4, ge=1, le=256)
    retry: RetryOverride | None = None

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the endpoint must be an http:// or https:// URL with a host")
        return url


class Operator(_Model):
    """A person or tool allowed to use the operator endpoints (message traces, dead letters, replay).

    Credentials: the SHA-256 digest of a bearer token, JWT ``client_id``/``sub`` values, client
    certificates - any of them.
    """

    name: str = Field(min_length=1, max_length=100)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    jwt_subjects: list[Annotated[str, Field(min_length=1)]] = []
    client_certs: list[ClientCert] = []


class Auditor(Operator):
    """A person or tool allowed to read the audit trail (the auditor role); credentials as an operator's."""


class JwtConfig(_Model):
    """JWT bearer tokens (OAuth2 / SMART Backend Services access tokens) and where their keys come from.

    Exactly one of ``jwks_file`` and ``jwks_url``. Keys are cached; the set is read again every
    ``jwks_refresh`` and when a token names a key id the cache does not hold (at most once per
    ``jwks_min_refresh``), so a rotated key is picked up and a removed one stops working.
    """

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: str | None = None
    jwks_url: str | None = None
    algorithms: list[Literal["RS256", "ES256"]] = Field(default=["RS256", "ES256"], min_length=1)
    leeway: Duration = timedelta(seconds=60)
    jwks_refresh: Duration = timedelta(hours=1)
    jwks_min_refresh: Duration = timedelta(seconds=30)


class RateLimitConfig(_Model):
    """Repeated authentication failures from one client address or for one presented identity: after
    ``max_failures`` within ``window`` the client gets 429 until the window has passed."""

    max_failures: int = Field(default=10, ge=1, le=10_000)
    window: Duration = timedelta(minutes=1)
    max_clients: int = Field(default=10_000, ge=10, le=10_000_000)


class AuthConfig(_Model):
    """Authentication beyond hashed static tokens: JWT bearer tokens and the failure rate limit.

    Client certificates need no setting here: run the service with TLS and a client CA
    (``fhir-bridge serve --tls-client-ca``) and list certificates under the systems and operators.
    """

    jwt: JwtConfig | None = None
    rate_limit: RateLimitConfig = RateLimitConfig()


class RuleMatch(_Model):
    """What a routing rule applies to; a field left out matches anything."""

    sender: str | None = None
    kind: (
        Literal[
            "hospital-notification",
            "care-communication",
            "acknowledgement",
            "home-care-observation",
            "municipal-record",
        ]
        | None
    ) = None


class RoutingRule(_Model):
    """Where messages go that name no receiver themselves."""

    name: str
    when: RuleMatch = RuleMatch()
    to: Literal["admitted-hospital"] | list[str]
    otherwise: list[str] = []  # when ``to`` is admitted-hospital and no admission is known


class Settings(_Model):
    """The whole configuration of one bridge deployment."""

    version: Literal[1] = 1
    listen: Listen = Listen()
    store: StoreConfig
    retry: RetryConfig = RetryConfig()
    medcom: MedcomConfig = MedcomConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    limits: Limits = Limits()
    retention: RetentionConfig = RetentionConfig()
    systems: list[System] = Field(min_length=1)
    routing: list[RoutingRule] = []
    operators: list[Operator] = []
    auditors: list[Auditor] = []
    auth: AuthConfig = AuthConfig()

    def system(self, system_id: str) -> System | None:
        """The system with ``system_id``."""
        return next((s for s in self.systems if s.id == system_id), None)

    def system_for_token(self, token: str) -> System | None:
        """The system a presented bearer token belongs to, compared in constant time per entry."""
        digest = hash_token(token)
        found: System | None = None
        for system in self.systems:
            for entry in system.inbound.tokens:
                # No early exit: the time taken does not tell which entry (if any) matched.
                if hmac.compare_digest(entry.sha256, digest):
                    found = system
        return found

    def operator_for_token(self, token: str) -> Operator | None:
        """The operator a presented bearer token belongs to, compared in constant time per entry."""
        digest = hash_token(token)
        found: Operator | None = None
        for operator in self.operators:
            if operator.sha256 is not None and hmac.compare_digest(operator.sha256, digest):
                found = operator
        return found

    def auditor_for_token(self, token: str) -> Auditor | None:
        """The auditor a presented bearer token belongs to, compared in constant time per entry."""
        digest = hash_token(token)
        found: Auditor | None = None
        for auditor in self.auditors:
            if auditor.sha256 is not None and hmac.compare_digest(auditor.sha256, digest):
                found = auditor
        return found

    def owner_of(self, *, sor: str | None = None, gln: str | None = None) -> System | None:
        """The system that owns the organisation with this SOR code or GLN."""
        for system in self.systems:
            for org in system.organisations:
                if (sor is not None and org.sor == sor) or (gln is not None and org.gln == gln):
                    return system
        return None

    def retry_policy(self, system_id: str | None = None) -> RetryPolicy:
        """The effective retry policy of a system: its own fields over the global ones."""
        from bridge.delivery.policy import RetryPolicy

        values = self.retry.model_dump()
        system = None if system_id is None else self.system(system_id)
        if system is not None and system.retry is not None:
            values.update(system.retry.model_dump(exclude_none=True))
        return RetryPolicy(**values)


# -- loading -----------------------------------------------------------------------------------------


def mapping_formats() -> list[str]:
    """The municipal formats the installed mapping sets provide (folder names; nothing is compiled)."""
    from bridge.errors import MappingSpecError
    from bridge.mapping.registry import discover
    from bridge.translate import mappings_root

    try:
        return [folder.name for folder in discover(mappings_root())]
    except MappingSpecError:
        return []


def format_path(loc: tuple[int | str, ...]) -> str:
    """``("systems", 1, "endpoint")`` as ``systems[1].endpoint``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def expand_env(
    data: Any, environ: Mapping[str, str], path: tuple[int | str, ...] = ()
) -> tuple[Any, list[Issue]]:
    """Replace ``${NAME}`` in every string of ``data`` from ``environ``; issues name unset variables."""
    issues: list[Issue] = []
    if isinstance(data, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name not in environ:
                issues.append(
                    error(f"environment variable {name} is not set", format_path(path), code="required")
                )
                return ""
            return environ[name]

        return _ENV_REF.sub(substitute, data), issues
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            out[key], found = expand_env(value, environ, (*path, str(key)))
            issues.extend(found)
        return out, issues
    if isinstance(data, list):
        items: list[Any] = []
        for i, value in enumerate(data):
            expanded, found = expand_env(value, environ, (*path, i))
            items.append(expanded)
            issues.extend(found)
        return items, issues
    return data, issues


def _issue_code(pydantic_type: str) -> IssueCode:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type == "extra_forbidden":
        return "structure"
    return "value"


def _validation_issues(exc: ValidationError) -> list[Issue]:
    issues: list[Issue] = []
    for err in exc.errors(include_input=False, include_url=False):
        # Union branches add the branch's type name to the location; it means nothing to the reader.
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
        )
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        elif err["type"] == "missing":
            message = "required setting is missing"
        issues.append(error(message, format_path(loc), code=_issue_code(err["type"])))
    return issues


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cross_check(settings: Settings) -> list[Issue]:
    """Problems no single field shows: duplicates, dangling references, unsound combinations."""
    from urllib.parse import urlsplit

    issues: list[Issue] = []
    from bridge.delivery.policy import policy_problems

    global_problems = policy_problems(**settings.retry.model_dump())
    issues.extend(error(why, f"retry.{field}") for field, why in global_problems)
    ids: dict[str, int] = {}
    sors: dict[str, str] = {}
    glns: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for i, system in enumerate(settings.systems):
        where = f"systems[{i}]"
        if system.id in ids:
            issues.append(error(f"system id {system.id!r} is used twice", f"{where}.id", code="duplicate"))
        ids.setdefault(system.id, i)
        for j, org in enumerate(system.organisations):
            at = f"{where}.organisations[{j}]"
            if org.sor is None and org.gln is None:
                issues.append(error("an organisation needs a sor or a gln", at, code="required"))
            for value, owners, field in ((org.sor, sors, "sor"), (org.gln, glns, "gln")):
                if value is None:
                    continue
                if value in owners and owners[value] != system.id:
                    issues.append(
                        error(
                            f"{field.upper()} {value} is already owned by system {owners[value]!r}; "
                            "an organisation belongs to one system",
                            f"{at}.{field}",
                            code="duplicate",
                        )
                    )
                owners.setdefault(value, system.id)
        for j, token in enumerate(system.inbound.tokens):
            if token.sha256 in tokens:
                issues.append(
                    error(
                        f"this token is already accepted for system {tokens[token.sha256]!r}",
                        f"{where}.inbound.tokens[{j}].sha256",
                        code="duplicate",
                    )
                )
            tokens.setdefault(token.sha256, system.id)
        if system.format != "fhir":
            if system.kind != "municipality":
                issues.append(
                    error(
                        f"only a municipality speaks {system.format}; a hospital speaks fhir",
                        f"{where}.format",
                    )
                )
            elif system.format not in mapping_formats():
                known = ", ".join(["fhir", *mapping_formats()])
                issues.append(error(f"unknown format {system.format!r}; one of {known}", f"{where}.format"))
        if system.retry is not None:
            merged = settings.retry.model_dump() | system.retry.model_dump(exclude_none=True)
            for field, why in policy_problems(**merged):
                if (field, why) not in global_problems:  # those are reported once, at retry.*
                    issues.append(error(why, f"{where}.retry.{field}"))
        if system.timeout <= timedelta(0):
            issues.append(error("must be longer than zero", f"{where}.timeout"))
        if system.timeout >= settings.dispatcher.lease:
            issues.append(
                error(
                    f"the timeout must be shorter than dispatcher.lease ({settings.dispatcher.lease}), "
                    "or another worker may send the same delivery while this one still waits",
                    f"{where}.timeout",
                    code="invariant",
                )
            )
        parts = urlsplit(system.endpoint)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            issues.append(
                warning(
                    "plain http to a host that is not loopback sends health data unencrypted; use https",
                    f"{where}.endpoint",
                    code="security",
                )
            )

    has_hospital = any(s.kind == "hospital" for s in settings.systems)
    for i, rule in enumerate(settings.routing):
        where = f"routing[{i}]"
        if rule.when.sender is not None and rule.when.sender not in ids:
            issues.append(
                error(f"no system has id {rule.when.sender!r}", f"{where}.when.sender", code="not-found")
            )
        if rule.to == ADMITTED_HOSPITAL:
            if not has_hospital:
                issues.append(error("admitted-hospital needs at least one hospital system", f"{where}.to"))
        else:
            if not rule.to:
                issues.append(error("a rule must deliver somewhere", f"{where}.to", code="required"))
            for j, target in enumerate(rule.to):
                if target not in ids:
                    issues.append(error(f"no system has id {target!r}", f"{where}.to[{j}]", code="not-found"))
            if rule.otherwise:
                issues.append(
                    error("otherwise only applies when to is admitted-hospital", f"{where}.otherwise")
                )
        for j, target in enumerate(rule.otherwise):
            if target not in ids:
                issues.append(
                    error(f"no system has id {target!r}", f"{where}.otherwise[{j}]", code="not-found")
                )
    issues.extend(_auth_problems(settings))
    return issues


def _auth_problems(settings: Settings) -> list[Issue]:
    """JWT and client-certificate settings that cannot work or would let one caller pass for another."""
    issues: list[Issue] = []
    jwt = settings.auth.jwt
    if jwt is not None:
        if (jwt.jwks_file is None) == (jwt.jwks_url is None):
            issues.append(error("set exactly one of jwks_file and jwks_url", "auth.jwt", code="required"))
        elif jwt.jwks_file is not None and not Path(jwt.jwks_file).is_file():
            # A warning: the file may be put in place before the service starts.
            issues.append(
                warning(
                    "no such file (a relative path is from the working directory); JWTs are refused "
                    "until it exists",
                    "auth.jwt.jwks_file",
                    code="not-found",
                )
            )
        if jwt.jwks_url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(jwt.jwks_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                issues.append(error("jwks_url must be an http:// or https:// URL", "auth.jwt.jwks_url"))
            elif parts.scheme == "http" and not _is_loopback(parts.hostname):
                issues.append(
                    warning(
                        "keys fetched over plain http can be swapped on the way; use https",
                        "auth.jwt.jwks_url",
                        code="security",
                    )
                )
    principals: list[tuple[str, str, list[str], list[ClientCert]]] = [
        (f"systems[{i}].inbound", f"system {s.id!r}", s.inbound.jwt_subjects, s.inbound.client_certs)
        for i, s in enumerate(settings.systems)
    ]
    principals += [
        (f"operators[{i}]", f"operator {o.name!r}", o.jwt_subjects, o.client_certs)
        for i, o in enumerate(settings.operators)
    ]
    principals += [
        (f"auditors[{i}]", f"auditor {a.name!r}", a.jwt_subjects, a.client_certs)
        for i, a in enumerate(settings.auditors)
    ]
    # Operators and auditors may share a credential (one person with both roles); systems may not
    # share one with anybody, or a system could act as an operator.
    seen: dict[tuple[str, str], str] = {}
    for where, who, subjects, certs in principals:
        keys = [(f"{where}.jwt_subjects[{j}]", ("jwt", v)) for j, v in enumerate(subjects)]
        for j, cert in enumerate(certs):
            if cert.subject is None and cert.sha256 is None:
                issues.append(
                    error("a client certificate needs a subject or a sha256", f"{where}.client_certs[{j}]")
                )
            if cert.subject is not None:
                keys.append((f"{where}.client_certs[{j}].subject", ("subject", cert.subject)))
            if cert.sha256 is not None:
                keys.append((f"{where}.client_certs[{j}].sha256", ("sha256", cert.sha256)))
        if subjects and jwt is None:
            issues.append(
                warning("jwt_subjects have no effect without auth.jwt", f"{where}.jwt_subjects", code="value")
            )
        for at, key in keys:
            other = seen.get(key)
            if (
                other is not None
                and other != who
                and (who.startswith("system") or other.startswith("system"))
            ):
                issues.append(error(f"this credential already identifies {other}", at, code="duplicate"))
            seen.setdefault(key, who)
    return issues


def check_settings(data: Any, environ: Mapping[str, str] | None = None) -> tuple[Settings | None, Outcome]:
    """Validate parsed configuration data; return the settings (None when invalid) and every issue."""
    outcome = Outcome()
    if not isinstance(data, dict):
        outcome.add(error("the configuration must be a mapping of settings", code="structure"))
        return None, outcome
    expanded, env_issues = expand_env(data, os.environ if environ is None else environ)
    outcome.extend(env_issues)
    unset = {issue.expression for issue in env_issues}
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        # A value whose variable is unset was already reported; its emptiness is no second problem.
        outcome.extend(i for i in _validation_issues(exc) if i.expression not in unset)
        return None, outcome
    outcome.extend(_cross_check(settings))
    return (None if outcome.has_errors else settings), outcome


def parse_settings(data: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed data; raises ``InvalidInput`` naming every problem with its path."""
    settings, outcome = check_settings(data, environ)
    if settings is None:
        raise InvalidInput(outcome)
    return settings


def read_settings_file(path: str | Path) -> tuple[Any, Outcome]:
    """The parsed YAML of a configuration file, or an Outcome saying why it cannot be read."""
    outcome = Outcome()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        outcome.add(
            error(f"cannot read the configuration file: {exc.__class__.__name__}: {exc}", code="not-found")
        )
        return None, outcome
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader), outcome  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        outcome.add(error(f"not valid YAML: {where}{problem}", code="structure"))
        return None, outcome


def check_settings_file(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[Settings | None, Outcome]:
    """Read and validate a configuration file; the Outcome lists every error and warning."""
    data, outcome = read_settings_file(path)
    if outcome.has_errors:
        return None, outcome
    return check_settings(data, environ)


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in a YAML file; raises ``InvalidInput`` naming every problem with its path."""
    settings, outcome = check_settings_file(path, environ)
    if settings is None:
        raise InvalidInput(outcome)
    return settings
