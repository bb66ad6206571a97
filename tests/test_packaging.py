"""The container image's Dockerfile: linted, and everything it copies exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import require_tool

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists() -> None:
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if match:
            sources += match.group(1).split()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_image_runs_as_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_every_subpackage_is_shipped() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(packages["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "exporter").rglob("__init__.py")
    }
    assert found <= listed, "add the package to [tool.setuptools] packages in pyproject.toml"
