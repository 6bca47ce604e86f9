"""Configuration: attrs classes with one section per concern.

``open(path, **overrides)`` takes flattened setting names (``durability``,
``segment_bytes``, ``flush_interval_ms`` ...); ``Config.from_toml`` reads
the same sections from a TOML file, so a deployment can keep its settings
under version control. Every value is validated; an unknown or out-of-range
setting raises ConfigError (a ValueError) naming it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import Error

__all__ = [
    "Config",
    "DurabilityConfig",
    "SegmentConfig",
    "ReadConfig",
    "OpenConfig",
    "Tier0Config",
    "Tier1Config",
    "Tier2Config",
    "TiersConfig",
    "RetentionConfig",
    "ConfigError",
    "DURABILITY_MODES",
]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: "full": an append (or a transaction) is on stable storage when the call
#: returns; concurrent committers share one sync. "normal": a background
#: flush makes data durable within flush_interval_ms (or once flush_bytes are
#: waiting); commit() forces it. "off": durable only at commit(), seal() and
#: close(). A crash never corrupts the store in any mode: it can only lose
#: what was not yet durable, and then whole batches only.
DURABILITY_MODES = ("full", "normal", "off")


class ConfigError(Error, ValueError):
    """An unknown or out-of-range setting."""


#: An attrs validator: (instance, attribute, value), raising when value is bad.
_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _int_range(lo: int, hi: int) -> _Validator:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int:
            raise ConfigError(f"setting {attr.name}: expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(f"setting {attr.name}={value} is out of range [{lo}, {hi}]")

    return check


def _optional_int_range(lo: int, hi: int) -> _Validator:
    check_int = _int_range(lo, hi)

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check_int(inst, attr, value)

    return check


def _optional_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not str or not value):
        raise ConfigError(f"setting {attr.name}: expected a non-empty string or nothing, got {value!r}")


def _float_range(lo: float, hi: float) -> _Validator:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if type(value) not in (int, float) or not lo <= value <= hi:
            raise ConfigError(f"setting {attr.name}={value!r}: expected a number in [{lo}, {hi}]")

    return check


def _one_of(choices: tuple[str, ...], name: str) -> _Validator:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ConfigError(f"setting {name}={value!r} must be one of {', '.join(choices)}")

    return check


@attrs.frozen
class DurabilityConfig:
    """When appended records reach stable storage."""

    mode: str = attrs.field(default="normal", validator=_one_of(DURABILITY_MODES, "durability"))
    flush_interval_ms: int = attrs.field(default=50, validator=_int_range(1, 3_600_000))
    # large enough that the flusher does not write back (and write-protect)
    # pages while the appender is still filling them, at a few hundred MB/s
    flush_bytes: int = attrs.field(default=16 * MiB, validator=_int_range(1, 16 * GiB))


@attrs.frozen
class SegmentConfig:
    """How large segments and records may be."""

    # the upper bound leaves room in the engine's 64 GiB reservation for a
    # transaction to grow the active segment past segment_bytes
    segment_bytes: int = attrs.field(default=64 * MiB, validator=_int_range(1 * MiB, 16 * GiB))
    max_record_bytes: int = attrs.field(default=16 * MiB, validator=_int_range(1, 2**31 - 1))


@attrs.frozen
class ReadConfig:
    """Read-side resources."""

    # sealed segments kept mapped at once; more are reopened on demand
    open_segments: int = attrs.field(default=64, validator=_int_range(1, 65536))
    # a read-only handle polls for the writer's new records this often while tailing
    poll_interval_ms: int = attrs.field(default=10, validator=_int_range(1, 60_000))


@attrs.frozen
class OpenConfig:
    """Opening a store."""

    # how long a writable open waits for another writer to let go of the
    # store (0: fail at once with LockedError), as SQLite's busy timeout
    lock_timeout_ms: int = attrs.field(default=0, validator=_int_range(0, 3_600_000))


@attrs.frozen
class Tier0Config:
    """Tier 0: sealed segment files on local disk, as the writer left them."""

    # bytes of sealed segment files kept locally once a lower tier holds
    # them (None: no bound); the active segment is never counted
    max_bytes: int | None = attrs.field(default=None, validator=_optional_int_range(0, 2**62))


@attrs.frozen
class Tier1Config:
    """Tier 1: seekable zstd copies of sealed segments on local disk."""

    max_bytes: int | None = attrs.field(default=None, validator=_optional_int_range(0, 2**62))
    # zstd level; 1 compresses at several hundred MB/s
    level: int = attrs.field(default=1, validator=_int_range(-7, 22))
    # bytes of segment per independent frame: what a cold point read fetches
    frame_bytes: int = attrs.field(default=1 * MiB, validator=_int_range(256 * KiB, 1 * MiB))


@attrs.frozen
class Tier2Config:
    """Tier 2: an object store (s3://bucket/prefix or file:///dir)."""

    url: str | None = attrs.field(default=None, validator=_optional_str)
    # for s3:// (each also from AOFLITE_TIER2_ENDPOINT, _ACCESS_KEY, _SECRET_KEY)
    endpoint: str | None = attrs.field(default=None, validator=_optional_str)
    region: str = attrs.field(default="us-east-1", validator=_optional_str)
    access_key: str | None = attrs.field(default=None, validator=_optional_str, repr=False)
    secret_key: str | None = attrs.field(default=None, validator=_optional_str, repr=False)
    ca_bundle: str | None = attrs.field(default=None, validator=_optional_str)
    retry_max_attempts: int = attrs.field(default=5, validator=_int_range(1, 1000))
    retry_base_delay_ms: int = attrs.field(default=100, validator=_int_range(0, 3_600_000))
    retry_max_delay_ms: int = attrs.field(default=5000, validator=_int_range(0, 3_600_000))
    retry_jitter: float = attrs.field(default=0.5, validator=_float_range(0.0, 1.0))


@attrs.frozen
class TiersConfig:
    """The pipeline that moves sealed segments down the tiers."""

    # how long an append waits for local space before BackpressureError(kind="admission")
    admission_timeout_ms: int = attrs.field(default=30_000, validator=_int_range(0, 3_600_000))
    # how long a read waits for a segment to come back from Tier 2
    hydration_timeout_ms: int = attrs.field(default=30_000, validator=_int_range(0, 3_600_000))
    # seal the active segment once its oldest record is this old (None: only when full)
    seal_interval_s: int | None = attrs.field(default=None, validator=_optional_int_range(1, 10**9))
    hydration_workers: int = attrs.field(default=2, validator=_int_range(1, 64))
    # snapshot the manifest to Tier 2 after this many seals (and at close)
    snapshot_every_seals: int = attrs.field(default=8, validator=_int_range(1, 1_000_000))


@attrs.frozen
class RetentionConfig:
    """Which old sealed segments are retired, from every tier."""

    max_age_s: int | None = attrs.field(default=None, validator=_optional_int_range(1, 10**12))
    max_bytes: int | None = attrs.field(default=None, validator=_optional_int_range(1, 2**62))
    max_segments: int | None = attrs.field(default=None, validator=_optional_int_range(1, 2**40))


@attrs.frozen
class Config:
    """All of a store's settings. Immutable: derive variants with evolve()."""

    durability: DurabilityConfig = attrs.field(factory=DurabilityConfig)
    segment: SegmentConfig = attrs.field(factory=SegmentConfig)
    read: ReadConfig = attrs.field(factory=ReadConfig)
    open: OpenConfig = attrs.field(factory=OpenConfig)
    tier0: Tier0Config = attrs.field(factory=Tier0Config)
    tier1: Tier1Config = attrs.field(factory=Tier1Config)
    tier2: Tier2Config = attrs.field(factory=Tier2Config)
    tiers: TiersConfig = attrs.field(factory=TiersConfig)
    retention: RetentionConfig = attrs.field(factory=RetentionConfig)
    # HealthConfig is defined at the end of the module, hence the lambda
    health: HealthConfig = attrs.field(factory=lambda: HealthConfig())

    def evolve(self, **overrides: Any) -> Config:
        """A copy with flattened settings replaced: evolve(segment_bytes=1 << 20)."""
        sections: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            where = _FLAT.get(name)
            if where is None:
                raise ConfigError(f"unknown setting {name!r} (known: {', '.join(sorted(_FLAT))})")
            section, field = where
            sections.setdefault(section, {})[field] = value
        changes = {}
        for s, f in sections.items():
            try:
                changes[s] = attrs.evolve(getattr(self, s), **f)
            except ConfigError as e:
                raise _flat_named(e, s) from None
        return attrs.evolve(self, **changes)

    def flat(self) -> dict[str, Any]:
        """Every setting under its flattened name."""
        return {name: getattr(getattr(self, s), f) for name, (s, f) in _FLAT.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from {"section": {"field": value}} as in a TOML file."""
        if not isinstance(data, dict):
            raise ConfigError("configuration must be a table of sections")
        kwargs = {}
        for section, values in data.items():
            section_cls = _SECTIONS.get(section)
            if section_cls is None:
                raise ConfigError(f"unknown configuration section [{section}]")
            if not isinstance(values, dict):
                raise ConfigError(f"configuration section [{section}] must be a table")
            known = {a.name for a in attrs.fields(section_cls)}
            for field in values:
                if field not in known:
                    raise ConfigError(f"unknown setting {field!r} in [{section}]")
            try:
                kwargs[section] = section_cls(**values)
            except ConfigError as e:
                raise ConfigError(f"{e} (in [{section}])") from None
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str) -> Config:
        """Read a TOML file whose tables are the sections above."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(data)


def _flat_named(e: ConfigError, section: str) -> ConfigError:
    """The validator names a field; a caller of evolve() knows it by its flattened name."""
    if section not in _PREFIXED:
        return e
    return ConfigError(str(e).replace("setting ", f"setting {section}_", 1))


_SECTIONS: dict[str, type] = {
    "durability": DurabilityConfig,
    "segment": SegmentConfig,
    "read": ReadConfig,
    "open": OpenConfig,
    "tier0": Tier0Config,
    "tier1": Tier1Config,
    "tier2": Tier2Config,
    "tiers": TiersConfig,
    "retention": RetentionConfig,
}

# Sections whose flattened names carry the section as a prefix, so that
# [tier0] max_bytes in TOML is tier0_max_bytes as a keyword to open().
_PREFIXED = ("tier0", "tier1", "tier2", "retention", "health")

# flattened name -> (section, field); "durability" alone is the mode
_FLAT: dict[str, tuple[str, str]] = {"durability": ("durability", "mode")}
for _section, _cls in _SECTIONS.items():
    for _a in attrs.fields(_cls):
        if _a.name != "mode":
            _flat = f"{_section}_{_a.name}" if _section in _PREFIXED else _a.name
            _FLAT[_flat] = (_section, _a.name)


# ---------------------------------------------------------------- health


@attrs.frozen
class HealthConfig:
    """Alert thresholds that ``db.health()`` and ``aoflite health`` apply
    (docs/alerts/aoflite-rules.yml applies the same ones in Prometheus)."""

    # the activation queue is non-empty this long: Tier 0 cannot take new segments
    activation_queue_s: int = attrs.field(default=60, validator=_int_range(1, 86_400))
    # hydration p99 above this, over hydration_window_s
    hydration_p99_ms: int = attrs.field(default=2000, validator=_int_range(1, 3_600_000))
    hydration_window_s: int = attrs.field(default=300, validator=_int_range(1, 86_400))
    # upload retries in the last minute above this
    upload_retries_per_min: int = attrs.field(default=10, validator=_int_range(0, 1_000_000))
    # flush or manifest (metadata) failures above this; the default 0 alerts on any
    flush_failures: int = attrs.field(default=0, validator=_int_range(0, 1_000_000))
    metadata_failures: int = attrs.field(default=0, validator=_int_range(0, 1_000_000))
    # Tier 2 fetch failures within tier2_fetch_window_s above this
    tier2_fetch_failures: int = attrs.field(default=2, validator=_int_range(0, 1_000_000))
    tier2_fetch_window_s: int = attrs.field(default=300, validator=_int_range(1, 86_400))


__all__ += ["HealthConfig", "load_config", "find_config_file", "masked", "CONFIG_ENV", "TIER2_ENV"]

_SECTIONS["health"] = HealthConfig
for _a in attrs.fields(HealthConfig):
    _FLAT[f"health_{_a.name}"] = ("health", _a.name)


# ---------------------------------------------------------------- loading

#: The file a store directory may hold its settings in.
CONFIG_FILE = "aoflite.toml"
#: Names a settings file; ``--config`` on the command line wins over it.
CONFIG_ENV = "AOFLITE_CONFIG"
#: Environment variables that override [tier2] settings, so credentials can
#: come from a secret manager instead of a file.
TIER2_ENV = {
    "AOFLITE_TIER2_ENDPOINT": "endpoint",
    "AOFLITE_TIER2_ACCESS_KEY": "access_key",
    "AOFLITE_TIER2_SECRET_KEY": "secret_key",
    "AOFLITE_TIER2_CA_BUNDLE": "ca_bundle",
}


def find_config_file(
    store_path: str | None = None, config_path: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The settings file that applies: config_path, else $AOFLITE_CONFIG,
    else aoflite.toml in the store's directory when there is one."""
    env = os.environ if env is None else env
    if config_path:
        return config_path
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    if store_path is not None:
        candidate = os.path.join(store_path, CONFIG_FILE)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_config(
    store_path: str | None = None, config_path: str | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """The settings for a store: the file find_config_file names (none:
    the defaults), then the AOFLITE_TIER2_* environment variables over
    [tier2]. A named file that is missing, an unknown key or a bad value
    raises ConfigError naming the file, the key and why; no message ever
    holds a credential's value.

    ``aoflite.open(path, config=load_config(path))`` opens a store with them.
    """
    env = os.environ if env is None else env
    path = find_config_file(store_path, config_path, env)
    config = Config()
    if path is not None:
        try:
            config = Config.from_toml(path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None
        except ConfigError as e:
            msg = _without_secrets(str(e))
            raise ConfigError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
    overrides: dict[str, Any] = {field: env[name] for name, field in TIER2_ENV.items() if env.get(name)}
    if overrides:
        try:
            config = attrs.evolve(config, tier2=attrs.evolve(config.tier2, **overrides))
        except ConfigError as e:
            raise ConfigError(f"environment: {_without_secrets(str(e))}") from None
    return config


def _without_secrets(message: str) -> str:
    """A validator's message, unless it is about a credential: those quote
    the value."""
    for section_cls in _SECTIONS.values():
        for a in attrs.fields(section_cls):
            if not a.repr and f"setting {a.name}" in message:
                return f"setting {a.name}: expected a non-empty string (value not shown)"
    return message


def _is_secret(section: type, field: str) -> bool:
    # credentials are the fields kept out of repr
    return not attrs.fields_dict(section)[field].repr


def _mask_url(value: str) -> str:
    """A URL with any user:password@ part replaced."""
    scheme, sep, rest = value.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return value


def masked(config: Config) -> dict[str, dict[str, Any]]:
    """Every setting by section, as TOML would hold it, with credentials
    replaced by "***" (or None when unset) and passwords cut out of URLs:
    what may be printed or logged."""
    out: dict[str, dict[str, Any]] = {}
    for name, section_cls in _SECTIONS.items():
        values = attrs.asdict(getattr(config, name))
        for field, value in values.items():
            if value is not None and _is_secret(section_cls, field):
                values[field] = "***"
            elif isinstance(value, str):
                values[field] = _mask_url(value)
        out[name] = values
    return out
