"""An isolated virtual environment for a peer server, installed from PyPI on first use.

A peer (BentoML) brings its own web stack and dependency pins, which must not leak into
modelgate's venv nor be shadowed by it, so it lives in its own venv under ``.bench/``. The venv
is kept between runs: a marker file written after a successful install says it is complete, and
only a venv without the marker is (re)built.

    python -m bench.peer_venv   # build it now (the bench does this on first use)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.targets import REPO_ROOT

# What the BentoML peer needs; versions float so a rebuilt venv gets today's release, and the
# report names the versions that actually ran.
PEER_PACKAGES = ("bentoml", "onnxruntime", "numpy")
INSTALL_TIMEOUT_S = 1800


class PeerUnavailable(RuntimeError):
    """The peer's venv could not be built; the bench skips the peer and says why."""


@dataclass(frozen=True, slots=True)
class PeerVenv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def executable(self, name: str) -> Path:
        return self.path / "bin" / name

    @property
    def marker(self) -> Path:
        # Written last, so an interrupted install is redone rather than half-used.
        return self.path / ".installed"

    def ready(self) -> bool:
        return self.marker.exists() and self.python.exists()

    def versions(self) -> dict[str, str]:
        """Installed versions of ``PEER_PACKAGES`` (for the report)."""
        script = ("import importlib.metadata as m, sys\n"
                  "for n in sys.argv[1:]: print(n, m.version(n))")
        try:
            done = subprocess.run([str(self.python), "-c", script, *PEER_PACKAGES],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return {}  # no venv (yet)
        if done.returncode != 0:
            return {}
        return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)

    def ensure(self, log_path: Path) -> None:
        """Build the venv unless a complete one is there; raise :class:`PeerUnavailable`."""
        if self.ready():
            return
        try:
            if self.path.exists():
                print(f"bench: {self.path} is incomplete; rebuilding it", flush=True)
                shutil.rmtree(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PeerUnavailable(f"cannot make {self.path}: {e}") from e
        started = time.monotonic()
        steps = [
            ("python -m venv", "", [sys.executable, "-m", "venv", str(self.path)]),
            ("pip install --upgrade pip", "",
             [str(self.python), "-m", "pip", "install", "--upgrade", "pip"]),
            (f"pip install {' '.join(PEER_PACKAGES)}", " (once; up to a few minutes)",
             [str(self.python), "-m", "pip", "install", *PEER_PACKAGES]),
        ]
        with log_path.open("w") as log:
            for what, hint, command in steps:
                print(f"bench: peer venv {self.path}: {what}{hint}...", flush=True)
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                try:
                    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S)
                except (OSError, subprocess.TimeoutExpired) as e:
                    raise PeerUnavailable(f"{what} failed: {e} (log: {log_path})") from e
                if done.returncode != 0:
                    raise PeerUnavailable(f"`{what}` exited with {done.returncode} "
                                          f"({_last_line(log_path)}); see {log_path}")
        self.marker.write_text(" ".join(PEER_PACKAGES) + "\n")
        print(f"bench: peer venv ready in {time.monotonic() - started:.0f}s at {self.path}",
              flush=True)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "no output"


def default_venv(log_dir: Path) -> PeerVenv:
    return PeerVenv(log_dir / "peer-venv")


def main() -> int:
    log_dir = REPO_ROOT / ".bench"
    venv = default_venv(log_dir)
    try:
        venv.ensure(log_dir / "peer-venv-install.log")
    except PeerUnavailable as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print(venv.versions())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
