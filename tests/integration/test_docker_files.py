"""The container files, tested without a Docker engine: the compose file parses; every command, port,
environment variable and configuration key it uses exists in the CLI, the simulators and the settings
schema; and the image's install step - a plain ``pip install`` of the built wheel into a fresh virtual
environment - gives a bridge that works outside the source tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from typer.exceptions import TyperException

from bridge.cli import app
from bridge.outbox.sql import load_migrations
from bridge.settings import check_settings_file
from bridge.simulators import traffic
from bridge.simulators.__main__ import _parser as simulator_parser

PROJECT = Path(__file__).resolve().parents[2]
DOCKER = PROJECT / "docker"
CONFIG_IN_CONTAINER = "/etc/fhir-bridge/bridge.yaml"
#: What an operator exports before ``docker compose up`` (the compose file requires each one).
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "compose-test-password",
    "BRIDGE_CITIZEN_KEY_SECRET": "compose-test-citizen-key-secret-0123456789",
    "HERLEV_OUTBOUND_TOKEN": "compose-test-outbound-token",
}

_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        present = env.get(name)
        if op in (":?", "?") and not present:
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and not present:
            return arg
        return present or ""

    return _COMPOSE_VAR.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    resolved = interpolate(data, OPERATOR_ENV)
    assert isinstance(resolved, dict)
    return resolved


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def bridge_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``fhir-bridge`` itself (the image's entrypoint, not overridden)."""
    return {
        name: s
        for name, s in services(compose).items()
        if s.get("build", {}).get("dockerfile") == "docker/Dockerfile" and "entrypoint" not in s
    }


def simulator_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in services(compose).items()
        if s.get("entrypoint") == ["python", "-m", "bridge.simulators"]
    }


def cli_params(argv: list[str]) -> dict[str, Any]:
    """Parse ``fhir-bridge ARGV`` with the real CLI (sub-commands, options, choices); raise if it cannot."""
    command: Any = typer.main.get_command(app)
    rest = list(argv)
    path = ["fhir-bridge"]
    while hasattr(command, "commands"):  # a group: the next word names a sub-command
        name = rest.pop(0)
        if name not in command.commands:
            raise TyperException(f"{' '.join(path)} has no command {name!r}")
        command = command.commands[name]
        path.append(name)
    params: dict[str, Any] = command.make_context(" ".join(path), rest).params
    return params


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


# -- the compose file ----------------------------------------------------------------------------------


def test_compose_has_the_multi_node_topology(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    assert set(all_services) == {
        "postgres",
        "migrate",
        "api",
        "worker-1",
        "worker-2",
        "hospital",
        "municipality",
    }
    roles = sorted(
        option(s["command"], "--role")
        for s in bridge_services(compose).values()
        if s["command"][0] == "serve"
    )
    assert roles == ["api", "worker", "worker"]
    migrate = all_services["migrate"]
    assert migrate["command"][:2] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker-1", "worker-2"):
        # The migrations run once, before any node starts.
        assert all_services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    for name in simulator_services(compose):
        # The peers start sending once the API answers /readyz (the image's HEALTHCHECK).
        assert all_services[name]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert all_services["postgres"]["image"].startswith("postgres:")
    for s in [*bridge_services(compose).values(), *simulator_services(compose).values()]:
        assert s["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_every_bridge_command_parses_with_the_cli(compose: dict[str, Any]) -> None:
    for name, service in bridge_services(compose).items():
        params = cli_params(service["command"])
        assert params["config"] == Path(CONFIG_IN_CONTAINER), name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert (DOCKER / mounts[CONFIG_IN_CONTAINER]).resolve() == DOCKER / "bridge.yaml"
    assert {
        p["role"].value
        for p in map(cli_params, (s["command"] for s in bridge_services(compose).values()))
        if "role" in p
    } == {"api", "worker"}
    # The check can fail: a wrong choice, option or command is refused.
    with pytest.raises(TyperException):
        cli_params(["serve", "--config", "x.yaml", "--role", "scheduler"])
    with pytest.raises(TyperException):
        cli_params(["db", "upgrade", "--conifg", "x.yaml"])
    with pytest.raises(TyperException):
        cli_params(["db", "migrate"])


def test_ports_line_up(compose: dict[str, Any]) -> None:
    settings = load_docker_settings(compose)
    all_services = services(compose)
    serve_ports = {
        name: int(option(s["command"], "--port"))
        for name, s in bridge_services(compose).items()
        if s["command"][0] == "serve"
    }
    assert set(serve_ports.values()) == {settings.listen.port}
    published = [p.rsplit(":", 1) for p in all_services["api"]["ports"]]
    assert [int(container) for _, container in published] == [serve_ports["api"]]
    # The image exposes and health-checks the same port.
    instructions = dockerfile()
    assert ("EXPOSE", str(settings.listen.port)) in instructions
    (health,) = [args for ins, args in instructions if ins == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{settings.listen.port}/readyz" in health

    sims = simulator_services(compose)
    for name, service in sims.items():
        args = simulator_parser().parse_args(service["command"])
        assert urlsplit(args.bridge).hostname == "api" and urlsplit(args.bridge).port == serve_ports["api"]
        assert f"127.0.0.1:{args.port}/healthz" in " ".join(service["healthcheck"]["test"])
        # The bridge delivers to this simulator at the endpoint of the system it plays.
        system = next(s for s in settings.systems if s.kind == args.role)
        endpoint = urlsplit(system.endpoint)
        assert (endpoint.hostname, endpoint.port) == (name, args.port)


def test_simulator_tokens_belong_to_the_systems_they_play(compose: dict[str, Any]) -> None:
    settings = load_docker_settings(compose)
    defaults = {"hospital": traffic.HOSPITAL_UNIT, "municipality": traffic.HERLEV_MUNICIPALITY}
    for service in simulator_services(compose).values():
        args = simulator_parser().parse_args(service["command"])
        caller = settings.system_for_token(args.token)
        assert caller is not None and caller.kind == args.role
        assert settings.owner_of(sor=defaults[args.role].sor) == caller


def load_docker_settings(compose: dict[str, Any]) -> Any:
    """docker/bridge.yaml validated with the environment compose gives the bridge services."""
    environments = [s["environment"] for s in bridge_services(compose).values()]
    assert all(env == environments[0] for env in environments)
    settings, outcome = check_settings_file(DOCKER / "bridge.yaml", environ=environments[0])
    assert settings is not None, outcome.summary()
    assert not outcome.has_errors
    return settings


def test_every_variable_and_key_of_the_configuration_is_provided(compose: dict[str, Any]) -> None:
    lines = (DOCKER / "bridge.yaml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line.split(" #")[0] for line in lines if not line.lstrip().startswith("#"))
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert needed == {"POSTGRES_PASSWORD", "BRIDGE_CITIZEN_KEY_SECRET", "HERLEV_OUTBOUND_TOKEN"}
    for name, service in bridge_services(compose).items():
        assert needed <= set(service["environment"]), name
    # Without the operator's secrets compose refuses to start rather than run with empty ones.
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    for missing in OPERATOR_ENV:
        with pytest.raises(KeyError, match=missing):
            interpolate(raw, {k: v for k, v in OPERATOR_ENV.items() if k != missing})

    settings = load_docker_settings(compose)  # every key is one the settings schema knows (extra=forbid)
    store = urlsplit(settings.store.url)
    postgres = services(compose)["postgres"]["environment"]
    assert store.scheme == "postgresql" and store.hostname == "postgres" and store.port == 5432
    assert (store.username, store.password, store.path.lstrip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert settings.store.citizen_key_secret.get_secret_value() == OPERATOR_ENV["BRIDGE_CITIZEN_KEY_SECRET"]
    healthcheck = services(compose)["postgres"]["healthcheck"]["test"]
    assert (
        option(healthcheck, "-U") == postgres["POSTGRES_USER"]
        and option(healthcheck, "-d") == postgres["POSTGRES_DB"]
    )


# -- the Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    instructions = dockerfile()
    stages = [args for ins, args in instructions if ins == "FROM"]
    assert len(stages) >= 2 and all("-slim" in s for s in stages)
    users = [args for ins, args in instructions if ins == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert instructions.index(("USER", users[-1])) > max(
        i for i, (ins, _) in enumerate(instructions) if ins == "RUN"
    )  # nothing runs as root after the switch
    (entrypoint,) = [args for ins, args in instructions if ins == "ENTRYPOINT"]
    scripts = _pyproject()["project"]["scripts"]
    assert yaml.safe_load(entrypoint) == ["fhir-bridge"] and "fhir-bridge" in scripts
    (cmd,) = [args for ins, args in instructions if ins == "CMD"]
    cli_params(yaml.safe_load(cmd))
    for ins, args in instructions:
        if ins == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (PROJECT / source).exists(), source
    installs = [args for ins, args in instructions if ins == "RUN" and "pip install" in args]
    assert len(installs) == 1 and "/wheels/*.whl" in installs[0]


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))


# -- the wheel, installed as the image installs it ---------------------------------------------------


def _dependency_view(target: Path) -> Path:
    """The project's installed dependencies without the project itself (whose editable install points
    back into the source tree), as a folder of links a fresh environment can put on its path."""
    source = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in source.iterdir():
        if (
            entry.name.startswith(("fhir_bridge", "__editable__", "bridge", "_virtualenv"))
            or entry.suffix == ".pth"
        ):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def test_the_wheel_installs_with_pip_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    # Build from a copy of what the Dockerfile copies, so the source tree gets no build/ folder.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(PROJECT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT / "bridge", src / "bridge", ignore=ignore)
    shutil.copytree(PROJECT / "mappings", src / "mappings", ignore=ignore)
    wheels = tmp_path / "wheels"
    # Offline: the build backend comes from the project's own environment (pinned in the test extras).
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--wheel-dir", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("fhir_bridge-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_dependencies.pth").write_text(f"{_dependency_view(tmp_path / 'deps')}\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BRIDGE_MAPPINGS_DIR", "VIRTUAL_ENV")
    }
    # The image's install step: pip install of the wheel; its dependencies must all be satisfied.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env, check=False
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    where = run(
        str(python),
        "-c",
        "import bridge, bridge.translate as t; print(bridge.__file__); print(t.mappings_root())",
    )
    package_file, mappings = where.stdout.split()
    assert Path(package_file).is_relative_to(venv) and Path(mappings).is_relative_to(venv)
    assert Path(mappings).name == "_mappings"

    fhir_bridge = str(venv / "bin" / "fhir-bridge")
    assert "db" in run(fhir_bridge, "--help").stdout
    record = PROJECT / "examples" / "records" / "home-care-citizen.json"
    installed = run(fhir_bridge, "translate", str(record))
    source_tree = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "translate", str(record)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT, check=False,
    )  # fmt: skip
    assert installed.returncode == 0 and source_tree.returncode == 0, installed.stderr
    assert installed.stdout == source_tree.stdout and '"resourceType": "Bundle"' in installed.stdout

    upgraded = run(fhir_bridge, "db", "upgrade", "--url", "sqlite:///var/outbox.db")
    applied = f"{len(load_migrations('sqlite'))} migration(s) applied"
    assert upgraded.returncode == 0 and applied in upgraded.stdout, upgraded.stderr
    assert (elsewhere / "var" / "outbox.db").exists()

    server = os.environ.get("BRIDGE_TEST_POSTGRES_URL")
    if server:  # the PostgreSQL migrations ship too
        import psycopg

        schema = f"test_wheel_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in server else "?"
            url = f"{server}{sep}options=-csearch_path%3D{schema}"
            pg = run(fhir_bridge, "db", "upgrade", "--url", url)
            applied = f"{len(load_migrations('postgres'))} migration(s) applied"
            assert pg.returncode == 0 and applied in pg.stdout, pg.stderr
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
