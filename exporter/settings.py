"""Settings: a TOML file, environment variables and the command line, validated once at start."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from psycopg.conninfo import make_conninfo
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from exporter.dsn import libpq_keywords, option_problem, parse_dsn, scrub, split_dsns
from exporter.errors import ConfigError
from exporter.inputs import load_yaml, parse_json, parse_toml, read_text_file, usable_text

Profile = Literal["minimal", "standard", "full"]
#: A PostgreSQL interval as an operator writes it: "12 months", "90 days", "1 year 6 months".
#: (Six digits a part at most: PostgreSQL refuses "99999999999 years" as out of range, at
#: every scrape.)
INTERVAL = re.compile(
    r"\s*(\d{1,6}\s*(years?|months?|weeks?|days?|hours?|minutes?|mins?|seconds?|secs?)\s*)+"
)
_UNIT_SECONDS = {
    "y": 365 * 86400,
    "mo": 30 * 86400,
    "w": 7 * 86400,
    "d": 86400,
    "h": 3600,
    "mi": 60,
    "s": 1,
}
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: Durations: a year at most (a longer one is a typo, and some reach SQL intervals).
YEAR_SECONDS = 365 * 86400
Seconds = Annotated[float, Field(ge=0, le=YEAR_SECONDS)]
PositiveSeconds = Annotated[float, Field(gt=0, le=YEAR_SECONDS)]
#: A server-side timeout: PostgreSQL keeps it in milliseconds in an int (24.8 days at most),
#: and one under a millisecond would round to 0, which means no timeout at all.
DatabaseSeconds = Annotated[float, Field(ge=0.001, le=2_147_483)]
# Lists from the environment: comma-separated as postgres_exporter reads them, or JSON.
CommaList = Annotated[list[str], NoDecode]
CommaPaths = Annotated[list[Path], NoDecode]
# Mappings from the environment: "key=value,key=value" (postgres_exporter's constant labels'
# form), or a JSON object.
CommaDict = Annotated[dict[str, str], NoDecode]
LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING"}
LOG_LEVELS["error"] = "ERROR"
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def check_label_names(labels: dict[str, str]) -> dict[str, str]:
    """Check constant label names: Prometheus's form, not reserved (__*).

    >>> check_label_names({"env": "prod"})
    {'env': 'prod'}
    """
    for name in labels:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
            raise ValueError(f"{name[:40]!r} is not a label name")
    return labels


def _env_alias(name: str, *postgres_exporter_names: str) -> AliasChoices:
    """Accept a setting under its own name, PG_EXPORTER_<NAME>, and postgres_exporter's names."""
    # Not the bare name: an unrelated LISTEN_ADDRESS in the environment must not count
    # (populate_by_name keeps the bare name for the settings file and keyword arguments).
    return AliasChoices(f"PG_EXPORTER_{name.upper()}", *postgres_exporter_names)


def go_duration_seconds(value: Any) -> Any:
    """Read a number of seconds, or a Go duration as postgres_exporter takes them ("1m30s").

    >>> go_duration_seconds("1m30s"), go_duration_seconds("500ms"), go_duration_seconds("7")
    (90.0, 0.5, '7')
    """
    if not isinstance(value, str) or not value.strip() or value.strip()[-1].isdigit():
        return value
    text = value.strip()
    parts = _GO_DURATION.findall(text)
    if "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{text[:40]!r} is neither seconds nor a duration such as 1m30s")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class BudgetSettings:
    """How many objects of a kind get their own series, per target, and for how long."""

    budget: int = 250
    top_n: int = 20
    hold_seconds: float = 900.0
    include_schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    include_tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()


class UserPass(BaseModel):
    """postgres_exporter's userpass credentials of an auth module."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: SecretStr


class AuthModule(BaseModel):
    """Credentials and options for ad-hoc /probe targets, as postgres_exporter's auth_modules.

    `/probe?target=db:5432&auth_module=NAME` connects as `userpass.username`; `options` become
    key=value parameters of the DSN (sslmode = "require", ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["userpass"]
    userpass: UserPass
    options: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _usable_text(cls, module: Any) -> Any:
        return usable_text(module)

    @field_validator("options")
    @classmethod
    def _libpq_options(cls, options: dict[str, str]) -> dict[str, str]:
        # Checked at start, not at the first /probe (where it would look like the target's).
        unknown = sorted(set(options) - libpq_keywords())
        if unknown:
            raise ValueError(f"{unknown[0][:40]!r} is not a libpq connection option")
        problem = option_problem(options)
        if problem is not None:
            raise ValueError(scrub(problem, list(options.values())))
        return options


class TargetSettings(BaseModel):
    """One named server to watch, scraped through /probe?target=NAME."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: SecretStr | None = None
    dsn_env: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    type: Literal["postgres", "pgbouncer"] = "postgres"

    # Labels on every series of this target, over the global const_labels.
    const_labels: dict[str, str] = {}

    @field_validator("const_labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_label_names(labels)

    @model_validator(mode="after")
    def _one_dsn_source(self) -> TargetSettings:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("give exactly one of 'dsn' and 'dsn_env'")
        if self.password_env and self.password_file:
            raise ValueError("give at most one of 'password_env' and 'password_file'")
        return self

    def resolve_dsn(self, name: str) -> str:
        """Return the DSN with its password from the environment or a file, checked."""
        where = f"targets.{name}"
        if self.dsn_env is not None:
            dsn = os.environ.get(self.dsn_env)
            if not dsn:
                raise ConfigError(
                    f"{where}.dsn_env: environment variable {self.dsn_env} is not set"
                )
            _check_text(dsn, f"{where}.dsn_env: {self.dsn_env}")
        else:
            assert self.dsn is not None
            dsn = self.dsn.get_secret_value()
        parse_dsn(dsn, source=where)
        password: str | None = None
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"{where}.password_env: environment variable {self.password_env} is not set"
                )
            _check_text(password, f"{where}.password_env: {self.password_env}")
        elif self.password_file is not None:
            try:
                password = read_text_file(self.password_file).rstrip("\r\n")
            except ConfigError as exc:
                raise ConfigError(f"{where}.password_file: cannot read {exc}") from None
        return make_conninfo(dsn, password=password) if password is not None else dsn


def _check_text(value: str, where: str) -> None:
    """Raise ConfigError naming `where` if a value read indirectly is no text a server takes."""
    try:
        usable_text(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class _EnvSource(EnvSettingsSource):
    """The environment, its JSON values read as the settings' own (one line when they are bad)."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        """Parse a JSON value; raise ValueError naming the field, never the value."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except (ValueError, RecursionError):
            try:
                parse_json(value)
            except ValueError as exc:
                raise ValueError(f"{field_name}: {exc}") from None
            raise


class Settings(BaseSettings):
    """Every setting of the exporter; `config.example.toml` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="PG_EXPORTER_",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        # inf or NaN seconds, a count or a size: never a setting (1e400 reads as inf).
        allow_inf_nan=False,
    )

    data_source_name: SecretStr | None = Field(
        default=None, validation_alias=_env_alias("data_source_name", "DATA_SOURCE_NAME")
    )
    # postgres_exporter's other way: a URI without credentials, and the user and password
    # apart (each also from a file). DATA_SOURCE_NAME wins when both are set, as there.
    data_source_uri: str | None = Field(
        default=None, validation_alias=_env_alias("data_source_uri", "DATA_SOURCE_URI")
    )
    data_source_uri_file: Path | None = Field(
        default=None, validation_alias=_env_alias("data_source_uri_file", "DATA_SOURCE_URI_FILE")
    )
    data_source_user: str | None = Field(
        default=None, validation_alias=_env_alias("data_source_user", "DATA_SOURCE_USER")
    )
    data_source_user_file: Path | None = Field(
        default=None,
        validation_alias=_env_alias("data_source_user_file", "DATA_SOURCE_USER_FILE"),
    )
    data_source_pass: SecretStr | None = Field(
        default=None, validation_alias=_env_alias("data_source_pass", "DATA_SOURCE_PASS")
    )
    data_source_pass_file: Path | None = Field(
        default=None,
        validation_alias=_env_alias("data_source_pass_file", "DATA_SOURCE_PASS_FILE"),
    )
    # HOST:PORT, or several separated by commas (postgres_exporter's repeated flag).
    listen_address: str = Field(
        default=":9187",
        validation_alias=_env_alias("listen_address", "PG_EXPORTER_WEB_LISTEN_ADDRESS"),
    )
    telemetry_path: str = Field(
        default="/metrics",
        validation_alias=_env_alias("telemetry_path", "PG_EXPORTER_WEB_TELEMETRY_PATH"),
    )
    collector_dirs: CommaPaths = []
    extend_query_path: CommaPaths = []
    profile: Profile = "standard"
    # postgres_exporter's --disable-default-metrics: only the user's own collectors run.
    disable_default_metrics: bool = False
    # postgres_exporter 0.11's --disable-settings-metrics: leaves out the settings collector.
    disable_settings_metrics: bool = False
    # Accepted for postgres_exporter's deployments; every database is always discovered here.
    auto_discover_databases: bool = True
    disabled_collectors: CommaList = []
    # Collectors to run although their profile is above the chosen one, or off by default.
    enabled_collectors: CommaList = []
    include_databases: CommaList = []
    exclude_databases: CommaList = []
    max_databases: int = Field(default=100, ge=1)
    pool_size: int = Field(default=2, ge=1, le=20)
    connect_timeout_seconds: DatabaseSeconds = 5.0
    statement_timeout_seconds: DatabaseSeconds = 10.0
    lock_timeout_seconds: DatabaseSeconds = 1.0
    scrape_timeout_seconds: PositiveSeconds = Field(
        default=10.0,
        validation_alias=_env_alias("scrape_timeout_seconds", "PG_EXPORTER_COLLECTION_TIMEOUT"),
    )
    scrape_timeout_margin_seconds: Seconds = 0.5
    long_query_threshold_seconds: Seconds = 30.0
    top_n: int = Field(default=20, ge=1, le=1000)
    query_text: bool = True
    query_text_max_length: int = Field(default=200, ge=1, le=100_000)
    #: The statements collector's own top N (None: top_n), and statements left out of it by
    #: database or role name (postgres_exporter's --collector.stat_statements.* flags).
    statements_top_n: int | None = Field(default=None, ge=1, le=10_000)
    statements_exclude_databases: CommaList = []
    statements_exclude_users: CommaList = []
    #: Retention window per partitioned table: pattern -> interval, first match wins. A pattern
    #: with a dot matches "schema.table", without one the table name in any schema; * and ?
    #: are wildcards. Tables no pattern matches get partition_retention_default.
    partition_retention: CommaDict = {}
    partition_retention_default: str = "12 months"
    #: How often each materialized view is expected to be refreshed: pattern -> interval, as
    #: above. The freshness alert fires after two intervals without an observed refresh.
    matview_refresh_interval: CommaDict = {}
    matview_refresh_interval_default: str = "15 minutes"
    #: Where the health page's runbook links point: the exporter's own copy by default.
    runbook_url: str = "/runbook"
    object_budget: int = Field(default=250, ge=1)
    object_top_n: int = Field(default=20, ge=1, le=1000)
    object_hold_seconds: Seconds = 900.0
    include_schemas: CommaList = []
    exclude_schemas: CommaList = []
    include_tables: CommaList = []
    exclude_tables: CommaList = []
    application_name: str = "pg-health-exporter"
    gzip_level: int = Field(default=1, ge=1, le=9)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "text" is this exporter's own line; logfmt and json as postgres_exporter writes them.
    log_format: Literal["text", "logfmt", "json"] = "text"
    # postgres_exporter's PG_EXPORTER_METRIC_PREFIX: only its default can be honoured here.
    metric_prefix: Literal["pg"] = "pg"
    targets: dict[str, TargetSettings] = {}
    # Labels on every series of every target (postgres_exporter's PG_EXPORTER_CONSTANT_LABELS,
    # "name=value,name=value").
    const_labels: CommaDict = Field(
        default={}, validation_alias=_env_alias("const_labels", "PG_EXPORTER_CONSTANT_LABELS")
    )
    # postgres_exporter's multi-target form, /probe?target=HOST:PORT|DSN&auth_module=NAME.
    auth_modules: dict[str, AuthModule] = {}
    # Servers /probe may reach beyond the named targets: patterns of HOST:PORT or HOST
    # (any port), * and ? as wildcards. Empty (the default): none, /probe serves only the
    # named targets, so the exporter cannot be used to reach servers nobody configured.
    probe_allowed_targets: CommaList = []
    # Ad-hoc /probe targets kept with their pools; the least recently used is closed first.
    probe_max_targets: int = Field(default=20, ge=1, le=10_000)
    # An ad-hoc target not probed for this long has its pools closed.
    probe_idle_seconds: PositiveSeconds = 300.0
    web_config_file: Path | None = None
    # Serve on the sockets systemd passes (socket activation) instead of listen_address.
    web_systemd_socket: bool = False
    http_max_connections: int = Field(default=512, ge=1)
    http_request_head_timeout_seconds: PositiveSeconds = 10.0
    http_idle_timeout_seconds: PositiveSeconds = 75.0

    @field_validator("*", mode="before")
    @classmethod
    def _usable_text(cls, value: Any) -> Any:
        return usable_text(value)

    @field_validator("const_labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_label_names(labels)

    @field_validator("targets")
    @classmethod
    def _target_names(cls, targets: dict[str, TargetSettings]) -> dict[str, TargetSettings]:
        for name in targets:
            if not TARGET_NAME.fullmatch(name):
                raise ValueError(f"target name {name!r} must match {TARGET_NAME.pattern}")
        return targets

    @field_validator(
        "collector_dirs",
        "extend_query_path",
        "disabled_collectors",
        "enabled_collectors",
        "include_databases",
        "exclude_databases",
        "probe_allowed_targets",
        "include_schemas",
        "exclude_schemas",
        "include_tables",
        "exclude_tables",
        "statements_exclude_databases",
        "statements_exclude_users",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # From the environment: "a,b" as postgres_exporter reads it, or a JSON list
        # (for a regular expression with a comma in it).
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return parse_json(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator(
        "partition_retention", "matview_refresh_interval", "const_labels", mode="before"
    )
    @classmethod
    def _comma_separated_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("{"):
            return parse_json(value)
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise ValueError("expected key=value pairs separated by commas, or a JSON object")
        return {key.strip(): item.strip() for key, _, item in pairs}

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, value: Any) -> Any:
        return LOG_LEVELS.get(value.lower(), value) if isinstance(value, str) else value

    @field_validator("scrape_timeout_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return go_duration_seconds(value)

    @field_validator("telemetry_path")
    @classmethod
    def _telemetry_path(cls, path: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", path) or path in RESERVED_PATHS:
            raise ValueError(
                f"{path[:40]!r} must be a path starting with '/' other than"
                f" {', '.join(sorted(RESERVED_PATHS))}"
            )
        return path

    @field_validator("runbook_url")
    @classmethod
    def _runbook_url(cls, url: str) -> str:
        # It becomes every link of the health page: a web address or a path, never a
        # `javascript:` (or other scheme's) link a browser would run.
        if not re.match(r"(?i)(https?://[^\s/]|/(?!/))", url) or re.search(r"[\s\x00-\x1f]", url):
            raise ValueError(f"{url[:40]!r} must be an http(s) URL or a path starting with '/'")
        return url

    @field_validator("partition_retention_default", "matview_refresh_interval_default")
    @classmethod
    def _an_interval(cls, value: str) -> str:
        if not INTERVAL.fullmatch(value):
            raise ValueError(f"{value!r} is not an interval such as '12 months' or '15 minutes'")
        return value

    @field_validator("partition_retention", "matview_refresh_interval")
    @classmethod
    def _patterns_to_intervals(cls, mapping: dict[str, str]) -> dict[str, str]:
        for pattern, value in mapping.items():
            if not pattern:
                raise ValueError("an empty pattern")
            if not INTERVAL.fullmatch(value):
                raise ValueError(
                    f"{pattern}: {value!r} is not an interval such as '12 months' or '15 minutes'"
                )
        return mapping

    @field_validator(
        "include_databases",
        "exclude_databases",
        "include_schemas",
        "exclude_schemas",
        "include_tables",
        "exclude_tables",
    )
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern[:60]!r}: {exc}") from None
            except RecursionError:  # '(((((...' thousands deep
                raise ValueError(
                    f"bad regular expression {pattern[:60]!r}: nested too deeply"
                ) from None
        return patterns

    @field_validator("data_source_name")
    @classmethod
    def _dsn_parses(cls, dsn: SecretStr | None) -> SecretStr | None:
        if dsn is not None:
            dsns = split_dsns(dsn.get_secret_value())
            if not dsns:
                raise ValueError("empty: give a DSN, or leave it unset for libpq's defaults")
            for number, one in enumerate(dsns, 1):
                try:
                    parse_dsn(one, source=f"DSN {number} of {len(dsns)}")
                except ConfigError as exc:
                    # One DSN: the problem alone, as before there could be several.
                    problem = str(exc) if len(dsns) > 1 else str(exc).split(": ", 1)[1]
                    raise ValueError(problem) from None
        return dsn

    @field_validator("data_source_uri")
    @classmethod
    def _uri_parses(cls, uri: str | None) -> str | None:
        if uri:
            try:
                parse_dsn(_uri_dsn(uri), source="DATA_SOURCE_URI")
            except ConfigError as exc:
                raise ValueError(str(exc).split(": ", 1)[1]) from None
        return uri

    @field_validator("listen_address")
    @classmethod
    def _listen_address_parses(cls, address: str) -> str:
        listen_endpoints(address)
        return address

    @property
    def dsn(self) -> str:
        """Return the first DSN, or libpq's defaults (PGHOST, PGUSER, ...) when none is set."""
        return (self.data_sources() or [""])[0]

    def data_sources(self) -> list[str]:
        """Return the DSNs to watch, as postgres_exporter finds them; [] for libpq's defaults.

        DATA_SOURCE_NAME (several DSNs joined by commas) wins; else DATA_SOURCE_URI with
        DATA_SOURCE_USER and DATA_SOURCE_PASS, each of the three also from a *_FILE, which
        wins over the variable. Raise ConfigError if a file cannot be read.
        """
        if self.data_source_name is not None:
            return split_dsns(self.data_source_name.get_secret_value())
        uri = _read_secret_file(self.data_source_uri_file, "data_source_uri_file")
        if uri is None:
            uri = self.data_source_uri
        if not uri:
            return []
        user = _read_secret_file(self.data_source_user_file, "data_source_user_file")
        if user is None:
            user = self.data_source_user
        password = _read_secret_file(self.data_source_pass_file, "data_source_pass_file")
        if password is None and self.data_source_pass is not None:
            password = self.data_source_pass.get_secret_value()
        dsn = _uri_dsn(uri)
        parse_dsn(dsn, source="DATA_SOURCE_URI")
        credentials = {"user": user or None, "password": password or None}
        return [make_conninfo(dsn, **{k: v for k, v in credentials.items() if v})]

    @property
    def statement_text_length(self) -> int:
        """Return how much statement text a label may carry: 0 when none is published."""
        return self.query_text_max_length if self.query_text else 0

    def budget_settings(self) -> BudgetSettings:
        """Return the settings of the per-object series budget."""
        return BudgetSettings(
            budget=self.object_budget,
            top_n=self.object_top_n,
            hold_seconds=self.object_hold_seconds,
            include_schemas=tuple(self.include_schemas),
            exclude_schemas=tuple(self.exclude_schemas),
            include_tables=tuple(self.include_tables),
            exclude_tables=tuple(self.exclude_tables),
        )

    def sql_parameters(self) -> dict[str, Any]:
        """Return the values a collector's SQL may reference as %(name)s."""
        return {
            "long_query_threshold_seconds": self.long_query_threshold_seconds,
            "top_n": self.top_n,
            "statements_top_n": self.statements_top_n or self.top_n,
            "statements_exclude_databases": list(self.statements_exclude_databases),
            "statements_exclude_users": list(self.statements_exclude_users),
            "partition_retention": json.dumps(
                object_rules(self.partition_retention, self.partition_retention_default)
            ),
        }

    def matview_interval_seconds(self, schemaname: str, relname: str) -> float:
        """Return how often the view is expected to be refreshed, in seconds."""
        for rule in object_rules(
            self.matview_refresh_interval, self.matview_refresh_interval_default
        ):
            name = f"{schemaname}.{relname}" if rule["qualified"] else relname
            if re.search(str(rule["re"]), name):
                return interval_seconds(str(rule["window"]))
        raise AssertionError("the default rule matches every name")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command line over environment over file, as operators expect.
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def glob_regex(pattern: str) -> str:
    """Return an anchored regular expression (Python and PostgreSQL alike) for a glob.

    >>> glob_regex("audit_*")
    '^audit_.*$'
    >>> import re; bool(re.search(glob_regex("public.audit?logs"), "public.audit_logs"))
    True
    """
    return (
        "^"
        + "".join(
            ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
        )
        + "$"
    )


def object_rules(patterns: dict[str, str], default: str) -> list[dict[str, object]]:
    """Return per-object settings as ordered rules, the default last (it matches anything).

    >>> object_rules({"public.audit_logs": "2 years"}, "12 months")[0]["qualified"]
    True
    """
    rules: list[dict[str, object]] = [
        {"re": glob_regex(pattern), "qualified": "." in pattern, "window": window}
        for pattern, window in patterns.items()
    ]
    rules.append({"re": "", "qualified": False, "window": default})
    return rules


def interval_seconds(text: str) -> float:
    """Return an interval of INTERVAL's form in seconds (a month is 30 days, a year 365).

    >>> interval_seconds("15 minutes"), interval_seconds("1 year 6 months")
    (900.0, 47088000.0)
    """
    total = 0.0
    for amount, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        key = "mo" if unit.startswith("mo") else "mi" if unit.startswith("min") else unit[0]
        total += int(amount) * _UNIT_SECONDS[key]
    return total


RESERVED_PATHS = frozenset({"/", "/probe", "/healthz", "/readyz", "/-/reload"})


def _uri_dsn(uri: str) -> str:
    """Make DATA_SOURCE_URI ('host:5432/db?sslmode=disable') a URI libpq reads.

    >>> _uri_dsn("db:5432/postgres?sslmode=disable")
    'postgresql://db:5432/postgres?sslmode=disable'
    """
    uri = uri.strip()
    return uri if re.match(r"postgres(ql)?://", uri) else "postgresql://" + uri


def _read_secret_file(path: Path | None, setting: str) -> str | None:
    """Return a file's content without surrounding whitespace, as postgres_exporter reads it."""
    if path is None:
        return None
    try:
        return read_text_file(path).strip()
    except ConfigError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


# A setting's error names the setting, whichever environment variable it came from.
_FIELD_OF_ALIAS = {
    str(alias): name
    for name, field in Settings.model_fields.items()
    if isinstance(field.validation_alias, AliasChoices)
    for alias in field.validation_alias.choices
}


def listen_host_port(address: str) -> tuple[str, int]:
    """Split 'HOST:PORT' (HOST may be empty: every interface, IPv6 and IPv4).

    >>> listen_host_port(":9187")
    ('', 9187)
    >>> listen_host_port("127.0.0.1:9999")
    ('127.0.0.1', 9999)
    >>> listen_host_port("[::1]:9187")
    ('::1', 9187)
    """
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if (
        not sep
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or (":" in host and not bracketed)
        or (not bracketed and ("[" in host or "]" in host))
        or any(c.isspace() or c in "/?#@" for c in host)
    ):
        raise ValueError(f"{address[:60]!r} is not HOST:PORT (an IPv6 address in brackets)")
    if not bracketed:
        try:
            host.encode("idna")  # what the resolver is asked: a label empty or over 63 fails
        except UnicodeError:
            raise ValueError(f"{address[:60]!r}: {host[:40]!r} is not a host name") from None
    return (host[1:-1] if bracketed else host, int(port))


def listen_endpoints(addresses: str) -> list[tuple[str, int]]:
    """Split one or more comma-separated 'HOST:PORT' (postgres_exporter's repeated flag).

    >>> listen_endpoints("127.0.0.1:9187,[::1]:9187")
    [('127.0.0.1', 9187), ('::1', 9187)]
    """
    return [listen_host_port(address.strip()) for address in addresses.split(",")]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings; raise ConfigError with one line naming the source and the field."""
    source = str(config_file) if config_file else "settings"
    if config_file is not None:
        parse_toml(read_text_file(config_file), str(config_file))
    settings_cls = Settings
    if config_file is not None:
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})
        settings_cls = cast(
            "type[Settings]", type("FileSettings", (Settings,), {"model_config": config})
        )
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
    except SettingsError as exc:
        # A value in the environment that is not the JSON a nested setting needs; the
        # message names the field (and why, from _EnvSource), never the value.
        cause = exc.__cause__
        problem = str(cause) if isinstance(cause, ValueError) else str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {problem}") from None


def load_auth_modules_file(path: Path) -> dict[str, AuthModule]:
    """Read postgres_exporter's --config.file (YAML with `auth_modules`); raise ConfigError.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
    ...     _ = f.write("auth_modules:\\n  m:\\n    type: userpass\\n"
    ...                 "    userpass: {username: u, password: p}\\n")
    ...     f.flush()
    ...     load_auth_modules_file(Path(f.name))["m"].userpass.username
    'u'
    """
    document = load_yaml(path)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with auth_modules")
    unknown = sorted(str(key) for key in document if key != "auth_modules")
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (only auth_modules is read)")
    modules = document.get("auth_modules") or {}
    if not isinstance(modules, dict):
        raise ConfigError(f"{path}: auth_modules: expected a mapping of names to modules")
    parsed: dict[str, AuthModule] = {}
    for name, body in modules.items():
        try:
            parsed[str(name)] = AuthModule.model_validate(body)
        except ValidationError as exc:
            problem = describe_validation_error(exc)
            raise ConfigError(f"{path}: auth_modules: {name}.{problem}") from None
    return parsed


def describe_validation_error(exc: ValidationError) -> str:
    """Return the first error of a pydantic ValidationError as 'field.path: message'."""
    first = exc.errors(include_url=False, include_input=False)[0]
    # A key of the file or the environment may be 100,000 characters long: named, not quoted.
    where = ".".join(_FIELD_OF_ALIAS.get(str(part), str(part))[:80] for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own words
    if not where and first["type"] == "value_error":
        return f"{message}{more}"  # a whole-document check of ours names its own place
    return f"{where or '(top level)'}: {message}{more}"
