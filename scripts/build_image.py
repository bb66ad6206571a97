#!/usr/bin/env python3
"""Build the container image with buildah, on a Debian 12 base made here with debootstrap.

Usage::

    python scripts/build_image.py                      # localhost/pg-health-exporter:<version>
    python scripts/build_image.py --tag NAME --reuse   # skip the build if NAME exists already

Where the registry's ``python`` image cannot be pulled (no Docker engine, no registry), the
base is made from Debian's own packages: ``debootstrap --variant=minbase`` of bookworm with
``python3`` and ``python3-venv``, cached as a tarball under
``~/.cache/pg-health-exporter/image/`` and imported once into buildah's storage as
``localhost/pg-health-exporter-base:debian12``. ``--base IMAGE`` builds on another image
instead (for example ``python:3.11-slim-bookworm`` where the registry answers).

The build runs as ``buildah bud --isolation chroot --storage-driver vfs --format docker``
(the Docker format keeps the HEALTHCHECK, which OCI image configs cannot hold), with this
machine's CA bundle mounted aside for pip (``/run/host-ca.crt``; mounting over
``/etc/ssl/certs`` would break dpkg in the base) and the OCI labels filled in: version from
pyproject.toml, revision from ``git rev-parse HEAD``, source from the git remote.

``--reuse``: the tag is compared with a digest of what the image is made from (every file
of the checkout that git tracks or would, the commit, the base image's id); when the image
under the tag was built from the same digest, nothing is built. The test suite runs once
per PostgreSQL major and uses this so that one CI run builds the image once.

One build at a time on a machine (a lock in the cache directory): builds sharing buildah's
storage at once removed each other's containers and layers. Each image is labelled with its
checkout; images of checkouts that no longer exist are removed before a build.

Prints the image name on stdout; progress on stderr. Needs root (buildah with vfs storage,
debootstrap). Exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/pg-health-exporter-base:debian12"
DEFAULT_REPOSITORY = "localhost/pg-health-exporter"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_BUILD = "/run/host-ca.crt"
DIGEST_LABEL = "io.pg-health-exporter.context-digest"
#: The checkout an image was built from: once that directory is gone, so is the image.
CHECKOUT_LABEL = "io.pg-health-exporter.checkout"
#: Global options of every buildah call: no fuse-overlayfs or kernel overlay needed.
BUILDAH = ("buildah", "--storage-driver", "vfs")


class BuildError(RuntimeError):
    """The base or the image could not be made."""


def log(message: str) -> None:
    """Print progress to stderr, keeping stdout for the image name."""
    print(message, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Return where the debootstrap tarball is kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pg-health-exporter" / "image"


def run(args: Sequence[str], *, capture: bool = False, timeout: float = 1800) -> str:
    """Run a command; raise BuildError with its output's tail when it fails."""
    log("+ " + " ".join(args))
    proc = subprocess.run(
        list(args),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else sys.stderr,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-2000:] if capture else ""
        raise BuildError(f"{' '.join(args[:4])} ... failed: {tail}".strip())
    return proc.stdout if capture else ""


def image_id(name: str) -> str | None:
    """Return the id of an image in buildah's storage, or None when there is none."""
    proc = subprocess.run(
        [*BUILDAH, "images", "--quiet", "--no-trunc", name],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = proc.stdout.split()
    return ids[0] if proc.returncode == 0 and ids else None


def inspect_image(name: str) -> dict[str, object]:
    """Return ``buildah inspect`` of an image as JSON."""
    data = json.loads(run([*BUILDAH, "inspect", "--type", "image", name], capture=True))
    assert isinstance(data, dict)
    return data


def base_tarball() -> Path:
    """Return the Debian 12 root filesystem tarball, making it with debootstrap once."""
    tarball = cache_dir() / f"debian12-{'-'.join(BASE_PACKAGES)}.tar"
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (Debian package debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        started = time.monotonic()
        # The mirror: debootstrap's default unless DEBOOTSTRAP_MIRROR names another.
        mirror = [os.environ["DEBOOTSTRAP_MIRROR"]] if os.environ.get("DEBOOTSTRAP_MIRROR") else []
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                *mirror,
            ]
        )
        # Downloaded .debs and package lists are not part of an image.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(tarball)
        log(f"debootstrap base made in {time.monotonic() - started:.0f} s: {tarball}")
    return tarball


def ensure_base() -> str:
    """Return the base image's name, importing the debootstrap tarball into buildah once."""
    if image_id(BASE_IMAGE) is not None:
        return BASE_IMAGE
    tarball = base_tarball()
    containerfile = tarball.parent / "Containerfile.base"
    containerfile.write_text(f'FROM scratch\nADD {tarball.name} /\nCMD ["/bin/bash"]\n')
    run(
        [
            *BUILDAH,
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "-f",
            str(containerfile),
            "-t",
            BASE_IMAGE,
            str(tarball.parent),
        ]
    )
    return BASE_IMAGE


def _context_files() -> list[Path] | None:
    """Return every file of the checkout git knows of or would (None outside a git checkout).

    Wider than what .dockerignore lets through, on purpose: a reuse must never miss a change.
    """
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    names = sorted({name for name in proc.stdout.decode().split("\0") if name})
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def context_digest(base: str, revision: str) -> str | None:
    """Return a digest of everything the image is made from: files, base, labelled revision."""
    files = _context_files()
    if files is None:
        return None
    digest = hashlib.sha256()
    digest.update((image_id(base) or base).encode() + b"\0" + revision.encode() + b"\0")
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def project_version() -> str:
    """Return the version in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def build(tag: str, base: str, *, reuse: bool) -> str:
    """Build the image under ``tag`` (unless ``reuse`` finds it built from the same context)."""
    revision = _git("rev-parse", "HEAD") or "unknown"
    digest = context_digest(base, revision)
    if reuse and digest is not None and image_id(tag) is not None:
        labels = _labels(inspect_image(tag))
        if labels.get(DIGEST_LABEL) == digest:
            log(f"{tag} is up to date (context {digest}): not rebuilt")
            return tag
    build_args = {
        "PYTHON_IMAGE": base,
        "VERSION": project_version(),
        "REVISION": revision,
        "SOURCE": _git("remote", "get-url", "origin") or "unknown",
    }
    volumes: list[str] = []
    if HOST_CA.is_file():
        volumes = ["-v", f"{HOST_CA}:{CA_IN_BUILD}:ro"]
        build_args["PIP_CERT"] = CA_IN_BUILD
    previous = image_id(tag)
    started = time.monotonic()
    run(
        [
            *BUILDAH,
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            *volumes,
            *(f"--build-arg={key}={value}" for key, value in build_args.items()),
            f"--label={DIGEST_LABEL}={digest or 'none'}",
            f"--label={CHECKOUT_LABEL}={ROOT}",
            "-f",
            str(ROOT / "Dockerfile"),
            "-t",
            tag,
            str(ROOT),
        ]
    )
    log(f"built {tag} in {time.monotonic() - started:.0f} s")
    if previous is not None and previous != image_id(tag):
        # The image the tag named before is nameless now: without this, vfs storage keeps a
        # full copy of it per rebuild. In use by a container, it stays.
        subprocess.run([*BUILDAH, "rmi", previous], capture_output=True, check=False)
    return tag


def _labels(inspected: dict[str, object]) -> dict[str, str]:
    config = inspected.get("OCIv1")
    if not isinstance(config, dict):
        return {}
    labels = config.get("config", {}).get("Labels") or {}
    return {str(key): str(value) for key, value in labels.items()}


def prune_vanished_checkouts() -> None:
    """Remove the images built from checkouts that no longer exist (CI clones, say).

    Each checkout tags its own image (tests/test_image.py); with vfs storage each is a full
    copy, so without this the disk fills one clone at a time. An image in use stays.
    """
    listing = subprocess.run(
        [*BUILDAH, "images", "--format", "{{.ID}} {{.Name}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) != 2 or not fields[1].startswith(f"{DEFAULT_REPOSITORY}:"):
            continue
        image, name = fields
        checkout = subprocess.run(
            [*BUILDAH, "inspect", "--type", "image", "--format",
             f'{{{{index .OCIv1.Config.Labels "{CHECKOUT_LABEL}"}}}}', image],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()  # fmt: skip
        if checkout.startswith("/") and not Path(checkout).exists():
            log(f"removing {name}: its checkout {checkout} is gone")
            subprocess.run([*BUILDAH, "rmi", name], capture_output=True, check=False)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine's image-build lock: one build (or base import) at a time.

    Builds share buildah's storage and the base image: two at once (two checkouts' test runs)
    removed each other's intermediate containers and layers mid-build ("identifier is not a
    container", "layer not known").
    """
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the image and print its name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tag", help="image name (default localhost/pg-health-exporter:VERSION)")
    parser.add_argument("--base", help="base image (default: a Debian 12 base from debootstrap)")
    parser.add_argument(
        "--reuse", action="store_true", help="skip the build if --tag was built from this context"
    )
    options = parser.parse_args(argv)
    if shutil.which("buildah") is None:
        log("buildah is not installed (Debian package buildah)")
        return 1
    try:
        with machine_lock():
            prune_vanished_checkouts()
            base = options.base or ensure_base()
            tag = options.tag or f"{DEFAULT_REPOSITORY}:{project_version()}"
            print(build(tag, base, reuse=options.reuse))
    except (BuildError, subprocess.TimeoutExpired) as exc:
        log(f"build_image: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
