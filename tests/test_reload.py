"""Hot reload: SIGHUP and POST /-/reload, on a real exporter process and a real server."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.process import ExporterProcess, exporter_process
from tests.support import Scrape, Server, gauge_collector, scalar


def _config(path: Path, pg: Server, collectors: Path, *, with_b: bool, extra: str = "") -> None:
    text = (
        f'{extra}collector_dirs = ["{collectors}"]\n'
        f'application_name = "pghe-reload"\n'
        f'[targets.a]\ndsn = "{pg.monitor()}"\n'
    )
    if with_b:
        text += f'[targets.b]\ndsn = "{pg.monitor("template1")}"\n'
    path.write_text(text)


def _wait(what: str, check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def _probe(exporter: ExporterProcess, name: str) -> tuple[int, str]:
    status, _, body = exporter.get(f"/probe?target={name}")
    return status, body.decode()


def _reload_metrics(exporter: ExporterProcess) -> tuple[float, float]:
    page = Scrape(_probe(exporter, "a")[1])
    return (
        page.value("pg_exporter_config_last_reload_successful"),
        page.value("pg_exporter_config_last_reload_success_timestamp_seconds"),
    )


def test_reload_by_signal_and_by_post(pg: Server, tmp_path: Path) -> None:
    collectors = tmp_path / "collectors"
    collectors.mkdir()
    config = tmp_path / "config.toml"
    _config(config, pg, collectors, with_b=True)
    sessions_b = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'pghe-reload' AND datname = 'template1'"
    )
    with exporter_process(tmp_path, dsn=None, args=["--config", str(config)]) as exporter:
        assert _probe(exporter, "b")[0] == 200
        assert scalar(pg.admin(), sessions_b) > 0
        ok, first_time = _reload_metrics(exporter)
        assert ok == 1

        # SIGHUP: target b removed, a collector file added.
        (collectors / "answer.toml").write_text(gauge_collector("answer", "SELECT 42 AS value"))
        _config(config, pg, collectors, with_b=False)
        exporter.process.send_signal(signal.SIGHUP)
        _wait("target b gone", lambda: _probe(exporter, "b")[0] == 404)
        assert Scrape(_probe(exporter, "a")[1]).value("pg_test_answer_value") == 42
        _wait("b's pools closed", lambda: scalar(pg.admin(), sessions_b) == 0)

        # A bad configuration: the running one stays, one line says why, the metric says 0.
        _config(config, pg, collectors, with_b=False, extra="pool_size = 0\n")
        status, _, body = exporter.request("POST", "/-/reload")
        assert status == 500 and "pool_size" in body.decode()
        assert _probe(exporter, "a")[0] == 200
        ok, last_good = _reload_metrics(exporter)
        assert ok == 0 and last_good > first_time
        failures = [line for line in exporter.log().splitlines() if "reload failed" in line]
        assert len(failures) == 1 and "pool_size" in failures[0]

        # Fixed: back to 1, with a later time.
        _config(config, pg, collectors, with_b=True)
        status, _, body = exporter.request("POST", "/-/reload")
        assert status == 200, body
        ok, good_again = _reload_metrics(exporter)
        assert ok == 1 and good_again > last_good
        assert _probe(exporter, "b")[0] == 200
    assert "Traceback" not in exporter.log()


async def test_const_labels_on_every_series_of_a_target(pg: Server) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from exporter.fleet import build_fleet
    from exporter.server import build_app
    from exporter.settings import load_settings
    from tests.support import CATALOG

    settings = load_settings(
        None,
        data_source_name=pg.monitor(),
        const_labels="env=prod,team=db",  # postgres_exporter's form
        targets={"other": {"dsn": pg.monitor(), "const_labels": {"env": "staging"}}},
    )
    client = TestClient(TestServer(build_app(settings, build_fleet(settings, CATALOG))))
    await client.start_server()
    try:
        for path, env in [("/metrics", "prod"), ("/probe?target=other", "staging")]:
            page = Scrape(await (await client.get(path)).text())
            ours = [s for s in page.samples if s.name.startswith("pg_")]
            assert ours and all(
                s.labels.get("env") == env and s.labels.get("team") == "db" for s in ours
            ), path
    finally:
        await client.close()


def test_a_const_label_the_series_already_have_is_refused() -> None:
    import pytest

    from exporter.errors import ConfigError
    from exporter.fleet import build_fleet
    from exporter.settings import load_settings
    from tests.support import CATALOG

    with pytest.raises(ConfigError, match="'datname' is already a label"):
        build_fleet(load_settings(None, const_labels={"datname": "x"}), CATALOG)
