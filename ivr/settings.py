"""Every knob of the server, read once from IVR_* environment variables and `.env`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ivr.passwords import check_password_hash_format
from ivr.redis import sentinel_url
from ivr.redis.retention import (
    AUDIT_ENTRIES_KEPT,
    FLOW_VERSIONS_KEPT,
    MIN_FLOW_VERSIONS_KEPT,
    QUEUE_VERSIONS_KEPT,
    Retention,
)
from ivr.redis.sentinel_url import SCHEME, is_sentinel_url
from ivr.validation import Problem, describe_problems

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", SCHEME)
# IVR_SECRET_CRM_TOKEN is what flows read as `secrets.crm_token`.
SECRET_PREFIX = "IVR_SECRET_"
# A secret's value is replaced in every log line: a short one would hide ordinary text ("1").
MIN_SECRET_LENGTH = 8
_SECRET_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Templates read `secrets.items` as the mapping's own method, not as a secret of that name.
_MAPPING_ATTRIBUTES = frozenset(name for name in dir(dict) if not name.startswith("_"))


def secret_variable(name: str) -> str:
    """The environment variable that sets the secret `name`: crm_token -> IVR_SECRET_CRM_TOKEN."""
    return SECRET_PREFIX + name.upper()


def secret_name_problem(name: str) -> str | None:
    """Why `name` cannot name a secret, or None when it can."""
    if not _SECRET_NAME.fullmatch(name):
        return ("a secret's name is lower-case letters, digits and _, starting with a letter, "
                "at most 64 characters")
    if name in _MAPPING_ATTRIBUTES:
        return f"{name!r} cannot name a secret: templates read secrets.{name} as something else"
    return None


class _SecretVariables(PydanticBaseSettingsSource):
    """Every IVR_SECRET_<NAME> variable, from the environment and `.env` (the environment wins,
    as for other settings), as the `secrets` setting: {name lower-cased: value}."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self._sources = sources  # highest priority first

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is in __call__

    def __call__(self) -> dict[str, Any]:
        prefix = SECRET_PREFIX.lower()  # the sources hold names lower-cased
        found: dict[str, str] = {}
        for source in reversed(self._sources):
            found.update({key.removeprefix(prefix): value
                          for key, value in source.env_vars.items()
                          if key.startswith(prefix) and value})  # empty: unset
        return {"secrets": found} if found else {}


class _WithoutSecrets(PydanticBaseSettingsSource):
    """A source as it is, but for the `secrets` setting: only IVR_SECRET_<NAME> variables set it
    (_SecretVariables), not an IVR_SECRETS variable holding JSON, a second way nobody reads of."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is in __call__

    def __call__(self) -> dict[str, Any]:
        values = self._source()
        values.pop("secrets", None)
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IVR_", env_file=".env", extra="ignore", populate_by_name=True,
        hide_input_in_errors=True,  # a setting may be a secret: an error never shows a value
        # `IVR_ADMIN_USERS=` in a .env or a compose file means unset, as for every setting
        # (it was read as JSON, and refused).
        env_ignore_empty=True,
    )

    twilio_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "twilio_auth_token"),
        description="Auth Token that signs Twilio's webhooks. Unset: a local token is generated.",
    )
    public_url: str | None = Field(
        default=None,
        description="External base URL Twilio calls (e.g. https://ivr.example.com); signatures are "
        "checked against it.",
    )
    redis_url: str | None = Field(
        default=None, description="External Redis (redis://, rediss://, unix://) or its sentinels "
        "(redis+sentinel://). Unset: an embedded Redis under data_dir."
    )
    data_dir: Path = Field(default=Path("./var"), description="Embedded Redis data, local token.")
    redis_start_timeout: float = Field(
        default=10.0, gt=0,
        description="Seconds the embedded Redis may go neither answering nor loading its data "
        "before its start counts as failed (a load takes as long as it takes).",
    )
    flows_dir: Path = Field(default=Path("./flows"), description="Flow definitions (YAML).")
    sip_config: Path = Field(
        default=Path("./sip_config/queues.yaml"), description="Queues seeded into an empty store."
    )
    loyalty_api_url: str | None = Field(default=None, description="Base URL of the loyalty API.")
    loyalty_api_token: SecretStr | None = Field(
        default=None, description="Bearer token for the loyalty API."
    )
    secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="What flows' fetch steps read as secrets.<name>: every IVR_SECRET_<NAME> "
        "variable, the name lower-cased.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Admin API bearer token; also signs in to the admin page."
    )
    admin_users: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Admin page users: JSON {"name": "<hash from `ivr admin hash-password`>"}.',
        examples=['{"alice": "<hash from `ivr admin hash-password`>"}'],
    )
    admin_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="How long an admin page sign-in lasts."
    )
    admin_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where `ivr queues` finds the running server's admin API.",
    )
    decision_deadline: float = Field(
        default=3.0,
        gt=0,
        le=12,
        description="Seconds a webhook may spend deciding a route before the flow's fallback "
        "queue is used (Twilio gives up at 15 s).",
    )
    hold_after: float = Field(
        default=1.5, gt=0, le=10,
        description="Voice: seconds after which a caller whose route is not decided yet hears "
        "the hold prompt while the decision finishes (0 < hold_after).",
    )
    hold_prompt: str = Field(
        default="Thank you for calling. Please hold while we connect you.",
        min_length=1, max_length=300, description="What a caller on hold hears.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest webhook body accepted."
    )
    http_max_connections: int = Field(
        default=256, ge=1, description="Connection pool size for flow HTTP requests."
    )
    contact_memory_days: int = Field(
        default=365, ge=1, le=3650,
        description="Days contact memory (first/last seen, saved fields) is kept after a visit.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="json (one object a line), text, or auto: text at a terminal, else json.",
    )
    trace_max_entries: int = Field(
        default=10_000, ge=0, le=1_000_000,
        description="Call traces kept in Redis (the newest); 0 keeps none.",
    )
    trace_hours: float = Field(
        default=24.0, gt=0, le=24 * 30, description="Hours a call trace is kept in Redis."
    )
    queue_versions_kept: int = Field(
        default=QUEUE_VERSIONS_KEPT, ge=1, le=1_000_000,
        description="Versions of each queue kept (the newest; the current one always).",
    )
    flow_versions_kept: int = Field(
        default=FLOW_VERSIONS_KEPT, ge=MIN_FLOW_VERSIONS_KEPT, le=100_000,
        description="Published flows versions kept (the newest; the live one always).",
    )
    audit_entries_kept: int = Field(
        default=AUDIT_ENTRIES_KEPT, ge=1, le=10_000_000,
        description="Audit log entries kept (the newest).",
    )
    admin_history_days: float = Field(
        default=0, ge=0, le=36_500,
        description="Days queue and flows versions (from when the next one replaced them) and "
        "audit entries are kept; 0 for no age limit, only the counts.",
    )

    @field_validator("public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("admin_users")
    @classmethod
    def _hashed_passwords_only(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, encoded in users.items():
            try:
                check_password_hash_format(encoded.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"user {name!r}: the password {exc}") from None
        return users

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, secrets: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # Names only: a message never holds a value.
        problems = [f"{secret_variable(name)}: " + (
            f"the name after {SECRET_PREFIX} must start with a letter and hold only letters, "
            "digits and _, at most 64 characters" if not _SECRET_NAME.fullmatch(name)
            else problem)  # the variable's name is read lower-cased: its case is no problem
            for name in secrets if (problem := secret_name_problem(name))]
        problems += [f"{secret_variable(name)}: at least {MIN_SECRET_LENGTH} characters: a "
                     "shorter value could not be hidden in logs without hiding ordinary text"
                     for name, value in secrets.items()
                     if len(value.get_secret_value()) < MIN_SECRET_LENGTH]
        if problems:
            raise ValueError("\n".join(problems))
        return secrets

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url", "loyalty_api_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        # The messages never hold the URL itself: it may carry a password.
        if value is None:
            return value
        if is_sentinel_url(value):
            sentinel_url.parse(value)  # ValueError says what is missing
        elif not value.lower().startswith(REDIS_SCHEMES):
            got = (f", not {value.partition('://')[0]}://" if "://" in value
                   else " (it has none, or no // after it)")
            raise ValueError(
                f"must start with {', '.join(REDIS_SCHEMES)}{got}. Cluster URLs are not "
                "supported yet: give one Redis server's address, or the sentinels' "
                "(redis+sentinel://host:26379/mymaster)")
        return value

    def retention(self) -> Retention:
        """How much admin history the stores keep."""
        return Retention(self.queue_versions_kept, self.flow_versions_kept,
                         self.audit_entries_kept, self.admin_history_days)

    def flow_settings(self) -> dict[str, str | None]:
        """The only settings a flow can read (`settings.*`): no other secret is ever in a
        template's reach."""
        token = self.loyalty_api_token
        return {
            "loyalty_api_url": self.loyalty_api_url.rstrip("/") if self.loyalty_api_url else None,
            "loyalty_api_token": token.get_secret_value() if token else None,
        }

    def flow_secrets(self) -> dict[str, str]:
        """What flows' fetch steps read as `secrets.*`."""
        return {name: value.get_secret_value() for name, value in self.secrets.items()}

    def secrets_to_hide(self) -> dict[str, str]:
        """Every secret a flow can send, by name: what a log line must never show."""
        token = self.loyalty_api_token
        return {**({"loyalty_api_token": token.get_secret_value()} if token else {}),
                **self.flow_secrets()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, EnvSettingsSource)
        secret_variables = _SecretVariables(settings_cls, env_settings, dotenv_settings)
        return (init_settings, _WithoutSecrets(env_settings), _WithoutSecrets(dotenv_settings),
                secret_variables, file_secret_settings)

    @property
    def local_token_path(self) -> Path:
        """The local Twilio token, made by the server when TWILIO_AUTH_TOKEN is not set."""
        return self.data_dir / "local_twilio_auth_token"

    @property
    def local_admin_token_path(self) -> Path:
        """The local admin token, made by the server in a local trial."""
        return self.data_dir / "local_admin_token"

    @property
    def is_local_trial(self) -> bool:
        """Neither a Twilio account nor any admin is configured: the server runs on local
        tokens, the admin API and page on the local admin token. Setting any of the three ends
        it (production never gets an admin credential nobody configured)."""
        return (self.twilio_auth_token is None and self.admin_token is None
                and not self.admin_users)


class InvalidSettings(Exception):
    """The settings cannot be used: a line for each problem, naming its variable and never its
    value (a setting may be a secret, or hold password hashes)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n" + "\n".join(f"  {line}" for line in problems))


def load_settings() -> Settings:
    """The settings from the environment and `.env`, or InvalidSettings saying what is wrong:
    a value that fails its field's rules, or one that cannot even be read (a JSON setting that is
    not JSON, which pydantic-settings reports before any rule runs)."""
    try:
        return Settings()
    except ValidationError as exc:
        # In the flows' words (ivr.validation), without the values: a setting may be a secret.
        problems = [_named_by_variable(problem)
                    for problem in describe_problems(exc, Settings, show_input=False)]
    except SettingsError as exc:
        problems = [_unreadable(exc)]
    raise InvalidSettings(problems)


def variable_name(field: str) -> str:
    """The environment variable that sets `field` (`IVR_REDIS_URL` for redis_url)."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    if info is None:  # an alias already (pydantic reports a field by the name it was given)
        return field.upper()
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _named_by_variable(problem: Problem) -> str:
    """`IVR_REDIS_URL: must start with ...`: the field's environment variable, then the rest."""
    if not problem.where:
        return problem.what
    field = str(problem.where[0])
    what = problem.what
    if field == "secrets":  # many variables (IVR_SECRET_<NAME>), each named in its problem
        return str(Problem(problem.where[1:], what))
    if what.startswith("expected "):  # JSON, but not the shape the setting takes
        what += _shape(field)
    return ": ".join(part for part in (variable_name(field), str(Problem(problem.where[1:], what)))
                     if part)


def _shape(field: str) -> str:
    """How a setting is written, when its field gives an example."""
    info = Settings.model_fields.get(field)
    return f": write it like {info.examples[0]}" if info is not None and info.examples else ""


# pydantic-settings has no field in its error, only this message.
_UNREADABLE = re.compile(r'error parsing value for field "(?P<field>\w+)" from source '
                         r'"(?P<source>\w+)"')


def _unreadable(exc: SettingsError) -> str:
    """A setting pydantic-settings could not read, as one line without its value."""
    found = _UNREADABLE.search(str(exc))
    if found is None:
        return str(exc)
    field = found["field"]
    where = " (in .env)" if found["source"].startswith("DotEnv") else ""
    return f"{variable_name(field)}{where}: is not valid JSON{_shape(field)}"
