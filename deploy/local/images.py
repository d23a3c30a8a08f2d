#!/usr/bin/env python3
"""Build modelgate's images on a Docker Engine that cannot pull from a registry.

    sudo python3 deploy/local/images.py            # base, Redis and modelgate:latest
    sudo python3 deploy/local/images.py --only base

Three images, each skipped when one built from the same inputs is already there:

``modelgate-base:bookworm``
    Debian bookworm from Debian's own packages: ``debootstrap --variant=minbase`` with python3,
    python3-venv, python-is-python3 and ca-certificates, upgraded from bookworm-updates and
    bookworm-security, imported with ``docker import``. It trusts what the host trusts: every
    certificate of ``--ca-bundle`` (default: the host's ``/etc/ssl/certs/ca-certificates.crt``)
    that Debian's bundle lacks -- a private CA in front of the package index, say -- is installed
    under ``/usr/local/share/ca-certificates``, so it stays in the bundle when a later
    ``apt-get install`` runs ``update-ca-certificates`` again. Debian's pip reads that bundle.
    Inputs: the suite, packages, mirrors, those extra certificates and ``BASE_RECIPE``.
``modelgate-redis:bookworm``
    Debian's redis-server on that base (``redis.Dockerfile``); Compose uses it with
    ``MODELGATE_REDIS_IMAGE=modelgate-redis:bookworm``. Inputs: the base and the files it is built
    from.
``modelgate:latest`` (``--tag``)
    The repository's ``Dockerfile``, unchanged, with ``PYTHON_IMAGE`` set to the base. Docker's
    own layer cache is its cache by inputs: with nothing changed the build takes seconds.

Builds run with ``--network host``: the engine may run without NAT (``dockerd
--iptables=false``), and then only the host's network reaches the package mirrors and the
index. They use the classic builder (``DOCKER_BUILDKIT=0``): BuildKit would fetch the
Dockerfile's ``# syntax=`` frontend from a registry. Each image is tagged twice: the name above,
which Compose and the tests use, and ``NAME-<digest of its inputs>``, which marks it as built
from those inputs. Building the base needs root (debootstrap, chroot).

Prints one line per image (built or cached, and the seconds it took) and, with ``--report``,
writes them as JSON with the CPU model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

BASE_NAME = "modelgate-base"
REDIS_NAME = "modelgate-redis"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# Bump to rebuild every base made by an older version of the steps in build_base().
BASE_RECIPE = "2"
REDIS_FILES = ("redis.Dockerfile", "redis-entrypoint.sh")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
EXTRA_CA_DIR = "usr/local/share/ca-certificates"  # where update-ca-certificates adds local CAs
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# What every command run in the chroot sees: not the caller's locale, proxies or Python paths.
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
              "LANG": "C.UTF-8"}


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Built:
    image: str  # the name Compose and the tests use
    tag: str  # the same image under its inputs' digest
    cached: bool
    seconds: float


# --------------------------------------------------------------------------- helpers


def run(argv: list[str], env: dict[str, str] | None = None, stdin: IO[bytes] | None = None) -> None:
    print("+", " ".join(argv), flush=True)
    result = subprocess.run(argv, env=env, stdin=stdin, check=False)
    if result.returncode != 0:
        raise BuildError(f"`{' '.join(argv)}` failed with exit code {result.returncode}")


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def image_exists(docker: str, tag: str) -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True,
                          check=False).returncode == 0


def certificates(path: Path) -> list[str]:
    return PEM.findall(path.read_text(errors="replace"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x {os.cpu_count()}"


def classic_build(docker: str, argv: list[str]) -> None:
    run([docker, "build", "--network", "host", *argv], env={**os.environ, "DOCKER_BUILDKIT": "0"})


# --------------------------------------------------------------------------- base


@dataclass(frozen=True)
class BaseRecipe:
    mirror: str
    security_mirror: str
    ca_bundle: Path | None

    def sources(self) -> str:
        """apt sources of the image (deb822), the same suites as Debian's own images."""
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        return (f"Types: deb\nURIs: {self.mirror}\nSuites: {SUITE} {SUITE}-updates\n"
                f"Components: main\nSigned-By: {keyring}\n\n"
                f"Types: deb\nURIs: {self.security_mirror}\nSuites: {SUITE}-security\n"
                f"Components: main\nSigned-By: {keyring}\n")

    def host_certificates(self) -> list[str]:
        if self.ca_bundle is None:
            return []
        if not self.ca_bundle.is_file():
            raise BuildError(f"--ca-bundle {self.ca_bundle} is not a file; pass the PEM bundle "
                             f"your machine trusts, or --ca-bundle '' for Debian's alone")
        return certificates(self.ca_bundle)

    def digest(self) -> str:
        return digest(BASE_RECIPE, SUITE, BASE_PACKAGES, self.mirror, self.security_mirror,
                      sorted(set(self.host_certificates())))


def build_base(docker: str, recipe: BaseRecipe, force: bool) -> Built:
    started = time.monotonic()
    image = f"{BASE_NAME}:{SUITE}"
    tag = f"{image}-{recipe.digest()}"
    if not force and image_exists(docker, tag):
        run([docker, "tag", tag, image])
        return Built(image, tag, True, time.monotonic() - started)
    if os.geteuid() != 0:
        raise BuildError("building the base image needs root (debootstrap and chroot): "
                         "run this script with sudo")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BuildError("debootstrap is not installed: apt-get install debootstrap")
    work = Path(tempfile.mkdtemp(prefix="modelgate-base-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
             str(rootfs), recipe.mirror])
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(recipe.sources())
        debian = set(certificates(rootfs / HOST_CA_BUNDLE.relative_to("/")))
        extra = [c for c in dict.fromkeys(recipe.host_certificates()) if c not in debian]
        for number, certificate in enumerate(extra):
            (rootfs / EXTRA_CA_DIR / f"host-{number:02d}.crt").write_text(certificate + "\n")
        print(f"trusting {len(extra)} certificate(s) of {recipe.ca_bundle} beyond Debian's",
              flush=True)
        chroot = ["chroot", str(rootfs), "sh", "-ec"]
        # debootstrap left the host's resolv.conf in place for this; Docker mounts its own.
        run([*chroot, "apt-get update -q && apt-get upgrade -y -q && update-ca-certificates "
             "&& apt-get clean && rm -rf /var/lib/apt/lists/* /etc/resolv.conf"],
            env=CHROOT_ENV)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c",
                                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                                "."], stdout=subprocess.PIPE)
        try:
            run([docker, "import", "--change", "ENV LANG=C.UTF-8", "--change",
                 'CMD ["python3"]', "--change", f"LABEL org.modelgate.base={tag}", "-", tag],
                stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            if tar.wait() != 0:
                raise BuildError(f"tar of {rootfs} failed with exit code {tar.returncode}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run([docker, "tag", tag, image])
    return Built(image, tag, False, time.monotonic() - started)


# --------------------------------------------------------------------------- redis, modelgate


def build_redis(docker: str, base: Built, force: bool) -> Built:
    started = time.monotonic()
    image = f"{REDIS_NAME}:{SUITE}"
    tag = f"{image}-{digest(base.tag, *((HERE / f).read_text() for f in REDIS_FILES))}"
    if not force and image_exists(docker, tag):
        run([docker, "tag", tag, image])
        return Built(image, tag, True, time.monotonic() - started)
    classic_build(docker, [*(["--no-cache"] if force else []), "--build-arg",
                           f"BASE_IMAGE={base.tag}", "-f", str(HERE / "redis.Dockerfile"),
                           "-t", tag, "-t", image, str(HERE)])
    return Built(image, tag, False, time.monotonic() - started)


def build_modelgate(docker: str, base: Built, image: str, force: bool) -> Built:
    """The unchanged Dockerfile on the local base; cached (or not) by Docker's layer cache."""
    started = time.monotonic()
    before = image_id(docker, image)
    classic_build(docker, [*(["--no-cache"] if force else []), "--build-arg",
                           f"PYTHON_IMAGE={base.tag}", "-t", image, str(ROOT)])
    after = image_id(docker, image)
    return Built(image, f"{image.partition(':')[0]}@{after}", after == before,
                 time.monotonic() - started)


def image_id(docker: str, tag: str) -> str | None:
    result = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", tag],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def release_replaced(docker: str, previous: dict[str, str | None]) -> None:
    """Remove the images that ``previous`` (name -> id before this run) named and this run
    replaced, if nothing else tags them, children first; one in use by a container stays.
    Without this every code change would leave a full image behind. (The classic builder's
    intermediate stages stay: they are Docker's layer cache; ``docker image prune`` frees
    the ones no build needs any more.)"""
    for name, old in previous.items():
        if old is None or old == image_id(docker, name):
            continue
        tags = subprocess.run([docker, "image", "inspect", "--format", "{{len .RepoTags}}", old],
                              capture_output=True, text=True, check=False).stdout.strip()
        if tags == "0" and subprocess.run([docker, "image", "rm", old], capture_output=True,
                                          check=False).returncode == 0:
            print(f"removed the {name} it replaced ({old[:19]})", flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["base", "redis", "modelgate"], action="append",
                        help="build only these (repeatable); what they need is built too")
    parser.add_argument("--tag", default="modelgate:latest", help="the modelgate image's name")
    parser.add_argument("--ca-bundle", default=str(HOST_CA_BUNDLE),
                        help="PEM bundle whose certificates the base also trusts ('' for none)")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--security-mirror", default="http://deb.debian.org/debian-security")
    parser.add_argument("--no-cache", action="store_true",
                        help="rebuild every image from scratch, as on a new machine")
    parser.add_argument("--docker", default=shutil.which("docker") or "docker",
                        help="the docker command-line client")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.only or ["base", "redis", "modelgate"])
    recipe = BaseRecipe(args.mirror, args.security_mirror,
                        Path(args.ca_bundle) if args.ca_bundle else None)
    results: list[Built] = []
    # Children before parents, for release_replaced.
    names = [args.tag, f"{REDIS_NAME}:{SUITE}", f"{BASE_NAME}:{SUITE}"]
    previous = {name: image_id(args.docker, name) for name in names}
    try:
        base = build_base(args.docker, recipe, args.no_cache)
        results.append(base)
        if "redis" in wanted:
            results.append(build_redis(args.docker, base, args.no_cache))
        if "modelgate" in wanted:
            results.append(build_modelgate(args.docker, base, args.tag, args.no_cache))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    release_replaced(args.docker, previous)
    for built in results:
        print(f"{built.image:28} {'cached' if built.cached else 'built':6} "
              f"{built.seconds:7.1f} s  ({built.tag})")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(
            {"cpu": cpu_model(), "no_cache": args.no_cache,
             "images": [asdict(b) for b in results],
             "total_s": round(sum(b.seconds for b in results), 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
