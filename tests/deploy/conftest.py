"""Fixtures for the deployment files: the repository root, the demo models they serve, and
the real ``modelgate`` command-line parser their commands must satisfy."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from modelgate.cli.demo import build_demo_repository
from modelgate.cli.main import build_parser
from modelgate.core.repository import Model, load_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository `modelgate demo` builds, which the image bakes into /models."""
    root = tmp_path_factory.mktemp("demo-models")
    build_demo_repository(root)
    return root


@pytest.fixture(scope="session")
def demo_models(demo_repository: Path) -> dict[str, Model]:
    return load_repository(demo_repository)


def parse_command(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    """Parse ``modelgate ARGV`` as the container would, with its ``MODELGATE_*`` environment.

    argparse reports a bad flag by exiting; turn that into a test failure that names it.
    """
    try:
        return build_parser(dict(env)).parse_args(list(argv))
    except SystemExit as e:
        pytest.fail(f"`modelgate {' '.join(argv)}` does not parse with the real CLI "
                    f"(exit {e.code}); see the argparse message above")


def tool(name: str) -> str | None:
    """A command-line tool installed beside this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def run(argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
