"""Configuration: defaults < vvflow.toml < environment < command-line flags.

Unknown keys are errors, at the top and inside a stage, so a typo never passes
silently. Every error becomes one `ConfigError` line naming the field.
"""

from __future__ import annotations

import os
import re
import string
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
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
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from vvflow.errors import ConfigError
from vvflow.layout import DIR_SUFFIX, INPUT

ROOT_ENV = "VIDEO_STORAGE_ROOT"
CONFIG_ENV = "VVFLOW_CONFIG"
CONFIG_NAME = "vvflow.toml"
DEFAULT_ROOT = Path("storage")

#: Placeholders a stage may use besides the names of earlier stages.
PLACEHOLDERS = ("video", "name", "stem", "root", "output")
#: Placeholders an output path may use.
OUTPUT_PLACEHOLDERS = ("name", "stem")
#: The placeholder of a stage's folder output; an earlier stage's published folder is
#: `{<stage>_dir}`.
OUTPUT_DIR_PLACEHOLDER = "output_dir"

DEFAULT_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg",
    ".ts", ".mts", ".m2ts", ".mxf", ".3gp", ".ogv",
)  # fmt: skip

#: Settings passed to stage processes as VVFLOW_<FIELD> environment variables.
STAGE_OPTION_FIELDS = (
    "scan_detector", "scan_threshold", "scan_min_scene_seconds",
    "llm_base_url", "llm_model", "llm_api_key", "llm_timeout_seconds",
    "speech", "speech_model", "speech_language", "speech_threads",
)  # fmt: skip

#: 256 MiB: what the videos in flight may still need to finish. vvflow's own writes per
#: video are kilobytes (a report, an index entry), but stage outputs are not: the
#: built-in scan writes keyframes and a contact sheet (a few MiB per video), and user
#: stages may write more. Claiming a video that cannot be finished only moves it twice.
#: A disk that holds videos has gigabytes; on a small test disk, lower it.
DEFAULT_MIN_FREE_BYTES = 256 << 20

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NOTIFY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: The events a `[[notify]]` target may ask for.
NOTIFY_EVENTS = ("completed", "failed", "paused", "resumed", "storage_error", "storage_recovered")


def template_fields(template: str) -> list[str]:
    """The placeholder names in a `str.format` template; raise ValueError on bad syntax."""
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} may not have a format spec or conversion")
        if not field.isidentifier():
            raise ValueError(f"{{{field}}} is not a placeholder name")
        fields.append(field)
    return fields


def _output_template(value: str, kind: str) -> str:
    fields = template_fields(value)
    unknown = sorted(set(fields) - set(OUTPUT_PLACEHOLDERS))
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (use {{stem}} or {{name}})")
    if not fields:
        raise ValueError(f"must contain {{stem}} or {{name}}, else every video writes one {kind}")
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or value.endswith("/"):
        raise ValueError(f"must be a {kind} path relative to the storage root, without '..'")
    if path.parts[0] == INPUT:
        raise ValueError(f"must not be inside {INPUT}/, which holds the videos")
    return value


class StageConfig(BaseModel):
    """One `[[stages]]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    command: list[str] = Field(min_length=1)
    output: str
    timeout_seconds: float = Field(default=1800.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=100)
    backoff_seconds: float = Field(default=2.0, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)
    #: At most this many runs of this stage at once in one instance (None: up to
    #: `workers`, one per video in flight).
    concurrency: int | None = Field(default=None, ge=1, le=256)
    #: Named resources (top-level `[resources]`) each run holds, with amounts:
    #: `uses = ["gpu"]` is `uses = { gpu = 1 }`.
    uses: dict[str, int] = Field(default_factory=dict)
    #: A folder output: `{output_dir}` is an empty folder in the workspace, published
    #: whole to this path (relative to the root) by one rename after exit 0.
    output_dir: str | None = None

    @field_validator("uses", mode="before")
    @classmethod
    def _uses_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if not all(isinstance(name, str) for name in value):
                raise ValueError("must be a list of resource names or a table of amounts")
            if len(set(value)) != len(value):
                raise ValueError("names a resource twice")
            return {name: 1 for name in value}
        return value

    @field_validator("uses")
    @classmethod
    def _uses(cls, value: dict[str, int]) -> dict[str, int]:
        for name, amount in value.items():
            if amount < 1:
                raise ValueError(f"amount of {name!r} must be >= 1, not {amount}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _STAGE_NAME.match(value):
            raise ValueError("must be lowercase letters, digits and _ and start with a letter")
        if value in PLACEHOLDERS:
            raise ValueError(f"{value!r} is a placeholder name; choose another stage name")
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        return _output_template(value, "file")

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, value: str | None) -> str | None:
        return None if value is None else _output_template(value.rstrip("/"), "folder")

    @model_validator(mode="after")
    def _backoff(self) -> StageConfig:
        if self.backoff_max_seconds < self.backoff_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_seconds")
        return self


class NotifyConfig(BaseModel):
    """One `[[notify]]` table: a webhook `url` and/or a `command`, for some events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: For logs, `status` and the outbox's file names; derived from the url's host or
    #: the command's program when not given.
    name: str = ""
    url: str | None = None
    #: argv; the notification's JSON on stdin; exit 0 is delivered, 65 a refusal.
    command: list[str] | None = Field(default=None, min_length=1)
    events: tuple[str, ...] = ("completed", "failed")
    secret: SecretStr | None = None
    format: Literal["json", "slack", "discord"] = "json"
    timeout_seconds: float = Field(default=10.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, not {value!r}")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in value if e not in NOTIFY_EVENTS]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}; known: {', '.join(NOTIFY_EVENTS)}")
        if not value:
            raise ValueError(f"needs at least one event; known: {', '.join(NOTIFY_EVENTS)}")
        return tuple(dict.fromkeys(value))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not _NOTIFY_NAME.match(value):
            raise ValueError(
                f"{value!r}: a notify name is up to 64 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _target(self) -> NotifyConfig:
        if self.url is None and self.command is None:
            raise ValueError("a [[notify]] entry needs a url or a command (or both)")
        return self

    def derived_name(self) -> str:
        """The name given, else the url's host or the command's program."""
        if self.name:
            return self.name
        if self.url is not None:
            base = urlsplit(self.url).hostname or "webhook"
        else:
            assert self.command is not None
            base = PurePosixPath(self.command[0]).name or "command"
        cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", base).strip(".-_")[:48]
        return cleaned or "notify"


def builtin_stages() -> list[StageConfig]:
    """The pipeline that runs when no `[[stages]]` are configured: vvflow's own stages."""
    vvflow = [sys.executable, "-m", "vvflow", "stage"]
    return [
        StageConfig(
            name="scan",
            command=[*vvflow, "scan", "{video}", "{output}", "--keyframes-dir", "{output_dir}"],
            output="analytic/{stem}.analytic.json",
            output_dir="keyframes/{stem}",
        ),
        StageConfig(
            name="summarize",
            command=[
                *vvflow,
                "summarize",
                "{scan}",
                "{output}",
                "--keyframes-dir",
                "{scan_dir}",
                "--exports-dir",
                "{output_dir}",
            ],
            output="summaries/{stem}.summary.json",
            output_dir="exports/{stem}",
        ),
        StageConfig(
            name="logline",
            command=[*vvflow, "logline", "{summarize}", "{output}"],
            output="loglines/{stem}.logline.json",
        ),
    ]


class Settings(BaseSettings):
    """Every setting of vvflow; see DESIGN.md, section Configuration."""

    model_config = SettingsConfigDict(env_prefix="VVFLOW_", extra="forbid", frozen=True)

    #: Set by `load_settings` before construction: which TOML file to read.
    _toml_file: ClassVar[Path | None] = None

    root: Path = DEFAULT_ROOT
    stable_seconds: float = Field(default=2.0, ge=0)
    rescan_seconds: float = Field(default=30.0, gt=0)
    workers: int = Field(default=2, ge=1, le=256)
    extensions: Annotated[tuple[str, ...], NoDecode] = DEFAULT_EXTENSIONS
    observer: Literal["auto", "inotify", "polling"] = "auto"
    lease_seconds: float = Field(default=60.0, ge=1)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    #: Claiming pauses while the root has less free (0 turns the check off).
    min_free_bytes: int = Field(default=DEFAULT_MIN_FREE_BYTES, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    dedupe: bool = True
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    #: The web page (`vvflow run --web-port`, `vvflow web`); None: no page.
    web_port: int | None = Field(default=None, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    #: Required by every request when set (bearer token or the login cookie); required
    #: to bind the page to anything but loopback.
    web_token: SecretStr | None = None
    #: Named capacities shared by the stages that `use` them (`gpu = 1`).
    resources: dict[str, int] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(default_factory=builtin_stages)
    #: `[[notify]]` tables: where completed and failed videos (and more) are told.
    notify: tuple[NotifyConfig, ...] = ()
    #: The outbox keeps at most this many notifications; beyond it the oldest go.
    notify_outbox_max: int = Field(default=10000, ge=1)

    # Options of the built-in stages. They reach every stage process as the environment
    # variables of the same name (VVFLOW_SCAN_DETECTOR, VVFLOW_LLM_BASE_URL, ...), which
    # is how `vvflow stage ...` reads them.
    scan_detector: Literal["content", "adaptive", "threshold", "hash"] | None = None
    scan_threshold: float | None = Field(default=None, gt=0)
    scan_min_scene_seconds: float | None = Field(default=None, ge=0)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: float | None = Field(default=None, gt=0)
    #: Transcribe speech (default on); the model: unset for the packaged Whisper tiny.en,
    #: else a faster-whisper name ("small", "base.en") or a CTranslate2 model folder.
    speech: bool | None = None
    speech_model: str | None = None
    speech_language: str | None = None
    speech_threads: int | None = Field(default=None, ge=1, le=64)

    def stage_environment(self) -> dict[str, str]:
        """The built-in stage options that are set, as environment variables."""
        env = {}
        for field in STAGE_OPTION_FIELDS:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"VVFLOW_{field.upper()}"] = str(value)
        return env

    @field_validator("extensions", mode="before")
    @classmethod
    def _split_extensions(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in re.split(r"[,\s]+", value) if part]
        return value

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normalized = []
        for ext in value:
            e = ext.strip().lower()
            e = e if e.startswith(".") else "." + e
            if len(e) < 2 or "/" in e or e.count(".") != 1:
                raise ValueError(f"{ext!r} is not a file extension like '.mp4'")
            normalized.append(e)
        if not normalized:
            raise ValueError("needs at least one extension")
        return tuple(dict.fromkeys(normalized))

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[StageConfig]) -> list[StageConfig]:
        if not value:
            raise ValueError("needs at least one stage (omit [[stages]] for the built-in ones)")
        seen: list[str] = []
        outputs: set[str] = set()
        folders: list[str] = []
        for stage in value:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            allowed = set(PLACEHOLDERS) | set(seen) | set(folders)
            if stage.output_dir is not None:
                allowed.add(OUTPUT_DIR_PLACEHOLDER)
            for arg in stage.command:
                for field in template_fields(arg):
                    if field not in allowed:
                        later = " (a later stage)" if field in {s.name for s in value} else ""
                        raise ValueError(
                            f"stage {stage.name!r}: unknown placeholder {{{field}}}{later} "
                            f"in command; known: {', '.join(sorted(allowed))}"
                        )
            for output in (stage.output, stage.output_dir):
                if output is None:
                    continue
                if output in outputs:
                    raise ValueError(f"stage {stage.name!r}: output {output!r} is used twice")
                outputs.add(output)
            if stage.output_dir is not None:
                folders.append(stage.name + DIR_SUFFIX)
            seen.append(stage.name)
        names = set(seen)
        for folder in folders:
            if folder in names:
                raise ValueError(
                    f"stage name {folder!r} clashes with the placeholder {{{folder}}} of the "
                    "folder output of the stage before it; choose another name"
                )
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, int]) -> dict[str, int]:
        for name, amount in value.items():
            if not _STAGE_NAME.match(name):
                raise ValueError(
                    f"{name!r}: a resource name is lowercase letters, digits and _, "
                    "starting with a letter"
                )
            if amount < 1:
                raise ValueError(f"{name!r} must be >= 1, not {amount}")
        return value

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: tuple[NotifyConfig, ...]) -> tuple[NotifyConfig, ...]:
        named: list[NotifyConfig] = []
        seen: set[str] = set()
        for target in value:
            name = target.derived_name()
            if target.name and name in seen:
                raise ValueError(f"notify name {name!r} is used twice")
            base, number = name, 1
            while name in seen:  # two derived from one host: host-2, host-3, ...
                number += 1
                name = f"{base}-{number}"
            seen.add(name)
            named.append(target.model_copy(update={"name": name}))
        return tuple(named)

    @model_validator(mode="after")
    def _stage_resources(self) -> Settings:
        for i, stage in enumerate(self.stages):
            for name, amount in stage.uses.items():
                if name not in self.resources:
                    known = ", ".join(sorted(self.resources)) or "none; add a [resources] table"
                    raise ValueError(
                        f"stages.{i}.uses: stage {stage.name!r} uses {name!r}, which is not "
                        f"in [resources] (known: {known})"
                    )
                if amount > self.resources[name]:
                    raise ValueError(
                        f"stages.{i}.uses: stage {stage.name!r} needs {amount} of {name!r}, "
                        f"but [resources] has only {self.resources[name]}: it could never run"
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


def resolve_root(flag: str | None) -> Path:
    """`--root`, else $VIDEO_STORAGE_ROOT, else ./storage; always absolute."""
    raw = flag or os.environ.get(ROOT_ENV) or str(DEFAULT_ROOT)
    return Path(os.path.abspath(raw))


def resolve_config_file(flag: str | None, root: Path) -> tuple[Path | None, bool]:
    """The TOML file to read and whether it was asked for explicitly (then it must exist)."""
    explicit = flag or os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit), True
    default = root / CONFIG_NAME
    try:
        exists = default.exists()
    except OSError as exc:
        raise ConfigError(
            f"cannot look into the storage root {root}: {exc.strerror} "
            "(does the user vvflow runs as own it? see PUID/PGID)"
        ) from None
    return (default if exists else None), False


def _describe(exc: ValidationError, origin: str) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{loc}: " if loc else ""  # a check across fields names them in its message
    return f"invalid configuration: {where}{message}{more} [{origin}]"


def load_settings(
    *, root_flag: str | None = None, config_flag: str | None = None, **flags: Any
) -> Settings:
    """Build the settings from every source; raise ConfigError with one clear line."""
    root = resolve_root(root_flag)
    toml_file, explicit = resolve_config_file(config_flag, root)
    if toml_file is not None:
        if explicit and not toml_file.is_file():
            raise ConfigError(f"configuration file not found: {toml_file}")
        try:
            with toml_file.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {toml_file}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {toml_file}: {exc.strerror}") from None
        if "root" in data:
            raise ConfigError(
                f"invalid configuration: root: set the storage root with --root or "
                f"${ROOT_ENV}, not in {toml_file.name}"
            )
    origin = f"defaults < {toml_file or 'no config file'} < VVFLOW_* environment < flags"
    init = {key: value for key, value in flags.items() if value is not None}
    init["root"] = root
    Settings._toml_file = toml_file
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    except ValueError as exc:  # pydantic-settings' own parse errors (bad JSON in env)
        raise ConfigError(f"invalid configuration: {exc}") from None
    finally:
        Settings._toml_file = None
