"""The ``fhir-bridge`` command line.

Exit codes: 0 success; 1 the input is invalid (the OperationOutcome says why, with each problem's path);
2 the command cannot run (usage, unreadable file, broken mapping specs); 3 an internal error.
A failure prints one line on stderr and never a Python traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer

from bridge.errors import BridgeError, InvalidInput, MappingSpecError
from bridge.fhir.outcome import Outcome

if TYPE_CHECKING:
    from bridge.app import Role as AppRole
    from bridge.settings import Settings

app = typer.Typer(
    name="fhir-bridge",
    help="Cross-sector health data exchange bridge: municipal care records <-> FHIR R4, MedCom messaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schema_app = typer.Typer(help="Print published JSON Schemas.", no_args_is_help=True)
mappings_app = typer.Typer(help="Work with the mapping specs.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(mappings_app, name="mappings")

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
#: The interpreter's thread switch interval in a serving process (see ``_serve_process``).
SWITCH_INTERVAL_S = 0.001


class Target(StrEnum):
    fhir = "fhir"
    municipal = "municipal"


class FhirFormat(StrEnum):
    json = "json"
    xml = "xml"


InputArg = Annotated[str, typer.Argument(help="Input file, or - for standard input")]
MappingsOpt = Annotated[
    Path | None, typer.Option("--mappings", help="Mapping specs directory (default: the shipped mappings/)")
]


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_USAGE)


def _fail(message: str, code: int, outcome: Outcome | None = None) -> NoReturn:
    if outcome is not None:
        sys.stdout.write(json.dumps(outcome.to_fhir(), indent=2, ensure_ascii=False) + "\n")
    sys.stderr.write(f"fhir-bridge: {message}\n")
    raise typer.Exit(code)


def _write_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode("utf-8") + "\n")


def _invalid(exc: InvalidInput) -> NoReturn:
    _fail(f"invalid input: {exc.outcome.summary()}", EXIT_INVALID, exc.outcome)


@schema_app.command("municipal-record")
def schema_municipal_record() -> None:
    """Print the JSON Schema of the canonical municipal care record (municipal-v1)."""
    from bridge.municipal.model import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")


@app.command()
def translate(
    source: InputArg = "-",
    to: Annotated[
        Target, typer.Option("--to", help="Translate to FHIR or to the municipal record")
    ] = Target.fhir,
    fmt: Annotated[
        FhirFormat | None,
        typer.Option(
            "--format", help="FHIR format: of the output with --to fhir, of the input with --to municipal"
        ),
    ] = None,
    mappings: MappingsOpt = None,
    mapping: Annotated[
        str | None,
        typer.Option("--mapping", help="The municipal format (mapping set), e.g. borgerjournal-v1"),
    ] = None,
) -> None:
    """Translate municipal JSON to FHIR, or FHIR to municipal JSON.

    A care record (municipal-v1) <-> a FHIR Bundle; a hospital stay event <-> a MedCom HospitalNotification;
    a correspondence <-> a MedCom CareCommunication.
    """
    from bridge.fhir.parse import parse_fhir, sniff_format, to_xml
    from bridge.translate import fhir_to_municipal, mapping_set, municipal_to_fhir

    body = _read(source)
    if mapping is not None and mapping != "municipal-v1":
        _translate_with_set(body, mapping, to, fmt)
        return
    try:
        ms = mapping_set(mappings)
    except MappingSpecError as exc:
        _fail(f"broken mapping spec: {exc}", EXIT_USAGE)
    try:
        if to is Target.fhir:
            resource = municipal_to_fhir(body, ms)
            if fmt is FhirFormat.xml:
                sys.stdout.write(to_xml(resource).decode("utf-8") + "\n")
            else:
                _write_json(resource)
            return
        in_fmt = fmt.value if fmt is not None else sniff_format(body, None)
        result, outcome = fhir_to_municipal(parse_fhir(body, in_fmt), ms)
    except InvalidInput as exc:
        _invalid(exc)
    sys.stdout.write(result.model_dump_json(indent=2, exclude_none=True) + "\n")
    if outcome.issues:
        sys.stderr.write(
            f"fhir-bridge: warning: {len(outcome.issues)} element(s) not kept in the municipal record\n"
            + json.dumps(outcome.to_fhir(), indent=2, ensure_ascii=False)
            + "\n"
        )


def _translate_with_set(body: bytes, name: str, to: Target, fmt: FhirFormat | None) -> None:
    from bridge.fhir.parse import parse_fhir, parse_json, sniff_format, to_xml
    from bridge.translate import loaded_set

    try:
        chosen = loaded_set(name)
    except MappingSpecError as exc:
        _fail(f"broken mapping spec: {exc}", EXIT_USAGE)
    except InvalidInput as exc:
        _fail(exc.outcome.summary(), EXIT_USAGE)
    try:
        if to is Target.fhir:
            bundle = chosen.to_fhir(parse_json(body))
            if fmt is FhirFormat.xml:
                sys.stdout.write(to_xml(bundle).decode("utf-8") + "\n")
            else:
                _write_json(bundle)
            return
        in_fmt = fmt.value if fmt is not None else sniff_format(body, None)
        document, outcome = chosen.to_municipal(parse_fhir(body, in_fmt))
    except InvalidInput as exc:
        _invalid(exc)
    _write_json(document)
    if outcome.issues:
        sys.stderr.write(
            f"fhir-bridge: warning: {len(outcome.issues)} element(s) not kept in the {name} document\n"
            + json.dumps(outcome.to_fhir(), indent=2, ensure_ascii=False)
            + "\n"
        )


@app.command()
def validate(
    source: InputArg = "-",
    fmt: Annotated[
        FhirFormat | None, typer.Option("--format", help="Input format (default: detected)")
    ] = None,
) -> None:
    """Validate a FHIR resource, Bundle or MedCom message; print an OperationOutcome (0 valid, 1 invalid)."""
    from bridge.validation import validate_fhir

    body = _read(source)
    try:
        outcome = validate_fhir(body, fmt.value if fmt is not None else None)
    except InvalidInput as exc:
        _invalid(exc)
    sys.stdout.write(json.dumps(outcome.to_fhir(), indent=2, ensure_ascii=False) + "\n")
    if outcome.has_errors:
        sys.stderr.write(f"fhir-bridge: invalid: {outcome.summary()}\n")
        raise typer.Exit(EXIT_INVALID)


@mappings_app.command("check")
def mappings_check(
    directory: Annotated[Path | None, typer.Argument(help="Mappings directory")] = None,
) -> None:
    """Load and compile the mapping specs and ConceptMaps; name the first problem."""
    from bridge.mapping.engine import load_mapping_set
    from bridge.translate import default_mappings_dir

    where = directory or default_mappings_dir()
    try:
        ms = load_mapping_set(where)
    except MappingSpecError as exc:
        _fail(f"broken mapping spec: {exc}", EXIT_USAGE)
    maps = len(ms.maps) + len(ms.bundle_maps)
    sys.stdout.write(f"ok: {len(ms.files)} specs, {maps} maps, {len(ms.conceptmaps)} ConceptMaps\n")


def _sets(directory: Path | None) -> list[Path]:
    """A set folder, or every set under a mappings root (default: the shipped mappings/)."""
    from bridge.mapping.registry import MANIFEST, discover
    from bridge.translate import mappings_root

    where = directory or mappings_root()
    if (where / MANIFEST).is_file():
        return [where]
    try:
        found = discover(where)
    except MappingSpecError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not found:
        _fail(f"no mapping sets (folders with a mapping-set.yaml) under {where}", EXIT_USAGE)
    return found


@mappings_app.command("test")
def mappings_test(
    directory: Annotated[Path | None, typer.Argument(help="A mapping set, or a folder of sets")] = None,
    update: Annotated[
        bool, typer.Option("--update", help="Rewrite the expected outputs (review the diff)")
    ] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write a JUnit XML report here")] = None,
) -> None:
    """Run every golden case of the mapping sets: exit 0 all pass, 1 a case failed, 2 a set is broken."""
    from xml.etree import ElementTree

    from bridge.mapping.cases import discover, junit_xml, run_case
    from bridge.mapping.registry import load_set

    failed = 0
    suites: list[bytes] = []
    for folder in _sets(directory):
        try:
            loaded = load_set(folder)
        except MappingSpecError as exc:
            _fail(f"broken mapping set {folder.name}: {exc}", EXIT_USAGE)
        results = [run_case(loaded, case, update=update) for case in discover(loaded)]
        for r in results:
            state = "updated" if r.updated and r.passed else ("ok" if r.passed else "FAILED")
            sys.stdout.write(f"{loaded.name} / {r.name}: {state}\n")
            for problem in r.problems:
                sys.stdout.write(f"    {problem}\n")
        passed = sum(r.passed for r in results)
        sys.stdout.write(f"{loaded.name}: {passed} of {len(results)} cases passed ({loaded.version})\n")
        failed += len(results) - passed
        suites.append(junit_xml(loaded.name, results))
    if junit is not None:
        root = ElementTree.Element("testsuites")
        for suite in suites:
            root.append(ElementTree.fromstring(suite))
        junit.write_bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))
    if failed:
        sys.stderr.write(f"fhir-bridge: {failed} mapping case(s) failed\n")
        raise typer.Exit(EXIT_INVALID)


@mappings_app.command("coverage")
def mappings_coverage(
    name: Annotated[str, typer.Argument(help="The mapping set, e.g. municipal-v1")],
    root: Annotated[Path | None, typer.Option("--root", help="Folder of mapping sets")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Which record fields and FHIR elements each map reads and writes; case fields nothing maps."""
    from bridge.mapping.coverage import coverage
    from bridge.mapping.registry import load_set
    from bridge.translate import mappings_root

    folder = (root or mappings_root()) / name
    try:
        loaded = load_set(folder)
    except MappingSpecError as exc:
        _fail(f"broken or unknown mapping set {name}: {exc}", EXIT_USAGE)
    report = coverage(loaded)
    if as_json:
        _write_json(report.to_json())
        return
    for m in report.maps:
        sys.stdout.write(f"{m.name} -> {m.resource_type} ({m.file})\n")
        for read in m.reads:
            sys.stdout.write(f"    reads  {read}\n")
        for write in m.writes:
            sys.stdout.write(f"    writes {write}\n")
    sys.stdout.write(
        f"\nfields seen in the cases: {report.seen}; mapped by nothing: {len(report.unmapped)}\n"
    )
    for field in report.unmapped:
        sys.stdout.write(f"    {field}\n")


config_app = typer.Typer(help="Work with the bridge configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class Role(StrEnum):
    all = "all"
    api = "api"
    worker = "worker"


@config_app.command("check")
def config_check(
    path: Annotated[Path, typer.Argument(help="The configuration file (YAML)")],
) -> None:
    """Validate a configuration: print each problem with its path; exit 1 when it is invalid."""
    from bridge.settings import check_settings_file

    settings, outcome = check_settings_file(path)
    for issue in outcome.issues:
        where = issue.expression[0] if issue.expression else "(file)"
        sys.stdout.write(f"{issue.severity}: {where}: {issue.diagnostics}\n")
    if settings is None:
        sys.stderr.write(f"fhir-bridge: {path}: {len(outcome.errors)} problem(s)\n")
        raise typer.Exit(EXIT_INVALID)
    sys.stdout.write(f"ok: {path}: {len(settings.systems)} systems, {len(settings.routing)} routing rules\n")


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="The configuration file (YAML)")],
    host: Annotated[str | None, typer.Option("--host", help="Listen address (overrides listen.host)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (overrides listen.port)")] = None,
    role: Annotated[
        Role, typer.Option("--role", help="all: API and dispatcher; api or worker: one half alone")
    ] = Role.all,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM, chain first)")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The private key of --tls-cert (PEM)")
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", help="Ask for client certificates signed by this CA (mutual TLS)"),
    ] = None,
    tls_require_client_cert: Annotated[
        bool,
        typer.Option("--tls-require-client-cert", help="Refuse TLS handshakes without a client certificate"),
    ] = False,
) -> None:
    """Run the bridge service (API and dispatcher) until SIGTERM or SIGINT, then stop gracefully.

    A worker (--role worker) serves only /healthz and /readyz over HTTP. With --tls-client-ca a verified
    client certificate listed under a system's inbound.client_certs (or an operator's) identifies it.
    """
    import signal

    from bridge.observability.logging import configure_logging
    from bridge.outbox import open_store
    from bridge.settings import check_settings_file

    # JSON lines that refuse PHI, for the bridge and every library, before anything logs.
    configure_logging(log_level)
    settings, outcome = check_settings_file(config)
    if settings is None:
        _fail(f"invalid configuration: {outcome.summary()}", EXIT_INVALID, outcome)
    tls = _tls_options(tls_cert, tls_key, tls_client_ca, tls_require_client_cert)
    from bridge.translate import mapping_sets

    try:
        loaded = mapping_sets()  # all mapping sets, compiled before the first request; a reload swaps them
    except MappingSpecError as exc:
        _fail(f"broken mapping spec: {exc}", EXIT_USAGE)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda _signum, _frame: _reload_in_background())
    logging.getLogger("bridge.mappings").info(
        "mappings in force: %s", ", ".join(s.version for s in loaded.values())
    )
    listen_host = host or settings.listen.host
    listen_port = port if port is not None else settings.listen.port
    processes = settings.listen.processes if role is not Role.worker else 1
    if processes == 1:
        _serve_process(settings, role.value, log_level, tls, host=listen_host, port=listen_port)
        return
    from bridge.supervisor import Supervisor, listening_socket

    open_store(settings.store.url).close()  # migrate once, before the children open their own connections
    try:
        listening_socket(listen_host, listen_port, listen=False).close()  # can we listen there at all?
    except OSError as exc:
        _fail(f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}", EXIT_USAGE)

    def child(index: int) -> None:
        child_role: AppRole = role.value if index == 0 else "api"
        sock = listening_socket(listen_host, listen_port)
        _serve_process(settings, child_role, log_level, tls, sockets=[sock], migrate=False)

    status = Supervisor(processes, child).run()
    if status:
        raise typer.Exit(status)


def _serve_process(
    settings: Settings,
    role: AppRole,
    log_level: str,
    tls: dict[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    sockets: list[Any] | None = None,
    migrate: bool = True,
) -> None:
    """One process of the service: open the store, build the app for ``role``, serve until stopped."""
    import signal

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from bridge.api.protocol import with_header_deadline
    from bridge.app import create_app
    from bridge.clock import SystemClock
    from bridge.observability.logging import uvicorn_log_config
    from bridge.outbox import open_store

    store = open_store(settings.store.url, migrate=migrate)
    # The committer and delivery threads call into the store many times per batch and give up the
    # interpreter lock at each call; a busy event loop would keep it for the default 5 ms each time
    # before yielding it back. 1 ms keeps a batch's commit short while the loop is loaded.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # uvicorn handles SIGTERM/SIGINT (graceful stop), then raises the signal again against the handlers
    # found before it started; these note it instead, so a requested stop ends with exit code 0.
    stops: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stops.append(received))
    try:
        web = create_app(settings, store, SystemClock(), role=role)
        listen: dict[str, Any] = {} if sockets is not None else {"host": host, "port": port}
        server = uvicorn.Server(
            uvicorn.Config(
                web,
                **listen,
                loop="auto",  # uvloop where it is installed
                log_level=log_level,
                log_config=uvicorn_log_config(),  # keep the handler configure_logging installed
                access_log=False,  # request lines carry no PHI, but the audit trail is the record
                timeout_graceful_shutdown=int(settings.dispatcher.shutdown_grace.total_seconds()) or 1,
                server_header=False,
                **{
                    **tls,
                    # TLS keeps its h11 protocol (it fills in the client certificate); plain HTTP: httptools.
                    "http": with_header_deadline(
                        tls.get("http", HttpToolsProtocol), settings.limits.header_timeout.total_seconds()
                    ),
                },
            )
        )
        server.run(sockets=sockets)  # handles SIGTERM and SIGINT: stop accepting, finish, lifespan exit
    finally:
        store.close()


def _tls_options(
    cert: Path | None, key: Path | None, client_ca: Path | None, require_client_cert: bool
) -> dict[str, Any]:
    """uvicorn's TLS options from the serve command's; a missing or unreadable file is a usage error."""
    if cert is None and key is None and client_ca is None and not require_client_cert:
        return {}
    if cert is None or key is None:
        _fail("--tls-cert and --tls-key go together (and client certificates need both)", EXIT_USAGE)
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            _fail(f"{option}: no such file: {path}", EXIT_USAGE)
    from bridge.security.mtls import uvicorn_tls_options

    try:
        return uvicorn_tls_options(cert, key, client_ca, require_client_cert)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


def _reload_in_background() -> None:
    """SIGHUP: reload the mapping sets (tested against their cases first) without blocking the server."""
    import threading

    def run() -> None:
        from bridge.translate import reload_mappings

        log = logging.getLogger("bridge.mappings")
        report = reload_mappings()
        if report.swapped:
            log.info("mappings reloaded; in force: %s", ", ".join(report.versions.values()))
        else:
            log.error(
                "mappings reload refused (%d problems); in force: %s",
                len(report.problems),
                ", ".join(report.versions.values()),
            )
            for problem in report.problems:
                log.error("mappings reload: %s", problem)

    threading.Thread(target=run, name="mappings-reload", daemon=True).start()


@mappings_app.command("reload")
def mappings_reload(
    url: Annotated[str, typer.Option("--url", help="The running bridge, e.g. http://127.0.0.1:8080")],
    token_env: Annotated[
        str, typer.Option("--token-env", help="Environment variable holding an operator token")
    ] = "BRIDGE_OPERATOR_TOKEN",
) -> None:
    """Ask a running bridge to reload its mapping sets; they take effect only if every case passes."""
    import os

    import httpx

    token = os.environ.get(token_env)
    if not token:
        _fail(f"set {token_env} to an operator token", EXIT_USAGE)
    try:
        answer = httpx.post(
            url.rstrip("/") + "/admin/mappings/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {type(exc).__name__}", EXIT_USAGE)
    if answer.status_code == 200:
        versions = answer.json().get("versions", {})
        sys.stdout.write("reloaded; in force: " + ", ".join(versions.values()) + "\n")
        return
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code == 422 and isinstance(body, dict):
        sys.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        _fail("reload refused: the mappings in force stay (see the OperationOutcome)", EXIT_INVALID)
    _fail(f"the bridge answered HTTP {answer.status_code}", EXIT_USAGE)


#: The two ways the store commands name the store (exactly one is given).
StoreConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="The configuration file (YAML); uses store.url")
]
StoreUrlOpt = Annotated[
    str | None, typer.Option("--url", help="The store URL (sqlite:///... or postgresql://...)")
]


def _open_store(config: Path | None, url: str | None, *, bad_url: int) -> tuple[Any, str]:
    """The store named by ``--config FILE`` or ``--url URL`` (exactly one), opened without migrating."""
    from bridge.outbox import StoreError, open_store
    from bridge.settings import check_settings_file

    if (config is None) == (url is None):
        _fail("give exactly one of --config FILE or --url URL", EXIT_USAGE)
    if config is not None:
        settings, outcome = check_settings_file(config)
        if settings is None:
            _fail(f"invalid configuration: {outcome.summary()}", EXIT_INVALID, outcome)
        url = settings.store.url
    assert url is not None
    try:
        return open_store(url, migrate=False), url
    except ValueError as exc:
        _fail(f"invalid store URL: {exc}", bad_url)
    except StoreError as exc:
        _fail(f"cannot open the store at {_redacted(url)}: {exc}", EXIT_USAGE)


db_app = typer.Typer(help="Work with the outbox database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _redacted(url: str) -> str:
    """A store URL fit for a log line: the password, if any, replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@db_app.command("upgrade")
def db_upgrade(
    config: StoreConfigOpt = None,
    url: StoreUrlOpt = None,
) -> None:
    """Apply pending schema migrations to the outbox database; safe to run from several nodes at once."""
    from bridge.outbox import StoreError

    store, url = _open_store(config, url, bad_url=EXIT_INVALID)
    try:
        applied = store.migrate()
    except StoreError as exc:
        _fail(f"cannot upgrade the store at {_redacted(url)}: {exc}", EXIT_USAGE)
    finally:
        store.close()
    sys.stdout.write(f"ok: {_redacted(url)}: {applied} migration(s) applied, the schema is up to date\n")


audit_app = typer.Typer(help="Work with the audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    config: StoreConfigOpt = None,
    url: StoreUrlOpt = None,
    anchor: Annotated[
        str | None,
        typer.Option("--anchor", help="SEQ:HASH printed by an earlier run; catches a trail cut back"),
    ] = None,
) -> None:
    """Walk the audit trail's hash chain; exit 1 naming the first changed or missing record."""
    from bridge.audit import verify_trail
    from bridge.outbox import StoreError

    if (config is None) == (url is None):  # before the anchor is checked, as for every store command
        _fail("give exactly one of --config FILE or --url URL", EXIT_USAGE)
    pinned: tuple[int, str] | None = None
    if anchor is not None:
        seq, _, digest = anchor.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            _fail("--anchor must be SEQ:HASH (a record number and its 64-digit hash)", EXIT_USAGE)
        pinned = (int(seq), digest.lower())
    store, url = _open_store(config, url, bad_url=EXIT_USAGE)
    try:
        report = verify_trail(store, anchor=pinned)
    except StoreError as exc:
        _fail(f"cannot read the audit trail at {_redacted(url)}: {exc}", EXIT_USAGE)
    finally:
        store.close()
    if not report.intact:
        _fail(f"audit trail broken at record {report.broken_at}: {report.problem}", EXIT_INVALID)
    sys.stdout.write(
        f"ok: {report.entries} audit records, chain intact; head {report.head_seq}:{report.head_hash}\n"
    )


def main() -> None:
    """Console entry point: run the app; turn any escaped error into one line and an exit code."""
    try:
        app()
    except BridgeError as exc:
        sys.stderr.write(f"fhir-bridge: {exc}\n")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: no traceback reaches the user
        sys.stderr.write(f"fhir-bridge: internal error ({type(exc).__name__})\n")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
