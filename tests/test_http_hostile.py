"""The HTTP side as a hostile client meets it: a real exporter process on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server
from tests.process import ExporterProcess, exporter_process

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def exporter(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """Return one exporter serving /metrics and /probe?target=db, on the minimal profile."""
    directory = tmp_path_factory.mktemp("hostile")
    config = directory / "config.toml"
    config.write_text(f'profile = "minimal"\n[targets.db]\ndsn = "{pg.monitor()}"\n')
    with exporter_process(directory, dsn=pg.monitor(), args=["--config", str(config)]) as running:
        yield running


BAD_ACCEPT = [
    "text/plain;version=abc",
    "application/openmetrics-text; version=abc",
    "text/plain; version=1.x",
    "application/openmetrics-text; version=1.x",
    "application/openmetrics-text; version=",
    "application/openmetrics-text; version=1.0.0.0.0.0.0.x; q=abc",
    "text/plain; version=" + "9" * 5000,
    ";;;,,,=;version",
]


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=db"])
@pytest.mark.parametrize("accept", BAD_ACCEPT, ids=[value[:40] for value in BAD_ACCEPT])
def test_a_version_that_is_not_a_number_gets_the_text_format(
    exporter: ExporterProcess, path: str, accept: str
) -> None:
    mark = len(exporter.log())
    status, headers, body = exporter.get(path, {"Accept": accept})
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"\npg_up 1\n" in body
    assert TRACEBACK not in exporter.log()[mark:]


def test_prometheus_accept_header_still_gets_openmetrics(exporter: ExporterProcess) -> None:
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    status, headers, body = exporter.get("/metrics", {"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
