"""Configuration: attrs classes with one section per concern.

``open(path, **overrides)`` takes flattened setting names (``durability``,
``segment_bytes``, ``flush_interval_ms`` ...); ``Config.from_toml`` reads
the same sections from a TOML file, so a deployment can keep its settings
under version control. Every value is validated; an unknown or out-of-range
setting raises ConfigError (a ValueError) naming it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import attrs

from .errors import Error

__all__ = ["Config", "DurabilityConfig", "SegmentConfig", "ReadConfig", "ConfigError", "DURABILITY_MODES"]

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
class Config:
    """All of a store's settings. Immutable: derive variants with evolve()."""

    durability: DurabilityConfig = attrs.field(factory=DurabilityConfig)
    segment: SegmentConfig = attrs.field(factory=SegmentConfig)
    read: ReadConfig = attrs.field(factory=ReadConfig)
    open: OpenConfig = attrs.field(factory=OpenConfig)

    def evolve(self, **overrides: Any) -> Config:
        """A copy with flattened settings replaced: evolve(segment_bytes=1 << 20)."""
        sections: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            where = _FLAT.get(name)
            if where is None:
                raise ConfigError(f"unknown setting {name!r} (known: {', '.join(sorted(_FLAT))})")
            section, field = where
            sections.setdefault(section, {})[field] = value
        changes = {s: attrs.evolve(getattr(self, s), **f) for s, f in sections.items()}
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
            kwargs[section] = section_cls(**values)
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


_SECTIONS = {"durability": DurabilityConfig, "segment": SegmentConfig, "read": ReadConfig, "open": OpenConfig}

# flattened name -> (section, field); "durability" alone is the mode
_FLAT: dict[str, tuple[str, str]] = {"durability": ("durability", "mode")}
for _section, _cls in _SECTIONS.items():
    for _a in attrs.fields(_cls):
        if _a.name != "mode":
            _FLAT[_a.name] = (_section, _a.name)
