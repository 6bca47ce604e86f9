"""Settings: defaults, flattened names, TOML files and every validator bound."""

from __future__ import annotations

import os
import tempfile

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aoflite
from aoflite import Config, ConfigError
from aoflite.config import DURABILITY_MODES

MiB, GiB = 1 << 20, 1 << 30

#: The integer settings: flattened name -> (lowest, highest) allowed.
INT_SETTINGS = {
    "flush_interval_ms": (1, 3_600_000),
    "flush_bytes": (1, 16 * GiB),
    "segment_bytes": (1 * MiB, 16 * GiB),
    "max_record_bytes": (1, 2**31 - 1),
    "open_segments": (1, 65536),
    "poll_interval_ms": (1, 60_000),
    "lock_timeout_ms": (0, 3_600_000),
}

#: TOML section of each flattened name ("durability" alone is [durability] mode).
SECTIONS = {
    "durability": aoflite.DurabilityConfig,
    "segment": aoflite.SegmentConfig,
    "read": aoflite.ReadConfig,
    "open": aoflite.OpenConfig,
}


def _section_of(flat_name):
    field = "mode" if flat_name == "durability" else flat_name
    for section, cls in SECTIONS.items():
        if field in {a.name for a in attrs.fields(cls)}:
            return section, field
    raise AssertionError(f"no section holds {flat_name}")


def _toml(flat):
    """TOML text setting the flattened settings, each in its section."""
    tables: dict[str, list[str]] = {}
    for name, value in flat.items():
        section, field = _section_of(name)
        tables.setdefault(section, []).append(f"{field} = {value!r}".replace("'", '"'))
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in tables.items())


def _from_toml_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aoflite.toml")
        with open(path, "w") as f:
            f.write(text)
        return Config.from_toml(path)


def _assert_config_error(call, *names):
    with pytest.raises(ConfigError) as info:
        call()
    for name in names:
        assert name in str(info.value), f"{str(info.value)!r} does not name {name!r}"
    assert isinstance(info.value, ValueError) and isinstance(info.value, aoflite.Error)


def test_defaults():
    """Config() names every setting, durability defaults to "normal" and
    every other default lies within its own bounds (tuning values may move)."""
    flat = Config().flat()
    assert set(flat) == {"durability", *INT_SETTINGS}
    assert flat["durability"] == "normal"
    for name, (lo, hi) in INT_SETTINGS.items():
        assert lo <= flat[name] <= hi, name


def test_open_uses_defaults_overrides_and_config(tmp_path):
    """open() without settings uses the defaults; overrides apply on top of a
    given config."""
    with aoflite.open(str(tmp_path / "a")) as db:
        assert db.config == Config()
    base = Config().evolve(segment_bytes=2 * MiB, durability="off")
    with aoflite.open(str(tmp_path / "b"), config=base, durability="full", open_segments=3) as db:
        assert db.config.flat() == {**base.flat(), "durability": "full", "open_segments": 3}


_valid_flat = st.fixed_dictionaries(
    {},
    optional={
        "durability": st.sampled_from(DURABILITY_MODES),
        **{n: st.integers(lo, hi) for n, (lo, hi) in INT_SETTINGS.items()},
    },
)


@settings(max_examples=50, deadline=None)
@given(_valid_flat)
def test_evolve_flat_and_toml_agree(changes):
    """evolve(**flat) sets exactly the named settings, flat() reads them
    back, and a TOML file with the same settings gives the same Config."""
    base = Config()
    cfg = base.evolve(**changes)
    assert cfg.flat() == {**base.flat(), **changes}
    assert Config().evolve(**cfg.flat()) == cfg
    assert base == Config(), "evolve changed the original"
    assert _from_toml_text(_toml(changes)) == cfg


def test_config_is_immutable():
    """A Config cannot be changed in place; evolve() without changes is equal."""
    cfg = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.durability = None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.segment.segment_bytes = MiB
    assert cfg.evolve() == cfg


@pytest.mark.parametrize("name", INT_SETTINGS)
def test_integer_bounds(name):
    """Each integer setting accepts exactly [lowest, highest]; one past
    either end, a float, a bool or a str raises ConfigError naming it."""
    lo, hi = INT_SETTINGS[name]
    assert Config().evolve(**{name: lo}).flat()[name] == lo
    assert Config().evolve(**{name: hi}).flat()[name] == hi
    for bad in (lo - 1, hi + 1):
        _assert_config_error(lambda: Config().evolve(**{name: bad}), name, str(bad))
    for bad in (float(lo), True, str(lo), None):
        _assert_config_error(lambda: Config().evolve(**{name: bad}), name)


def test_durability_modes():
    """durability takes "full", "normal" or "off" and nothing else."""
    for mode in ("full", "normal", "off"):
        assert Config().evolve(durability=mode).flat()["durability"] == mode
    for bad in ("FULL", "", "sync", None, 1):
        _assert_config_error(lambda: Config().evolve(durability=bad), repr(bad))


def test_unknown_flat_setting():
    """An unknown flattened name raises ConfigError naming it."""
    _assert_config_error(lambda: Config().evolve(segment_size=MiB), "segment_size")
    # the section field name is not a flattened name
    _assert_config_error(lambda: Config().evolve(mode="full"), "mode")


def test_empty_toml_is_the_defaults():
    """A file without tables leaves every setting at its default."""
    assert _from_toml_text("") == Config()
    assert _from_toml_text("[segment]\n") == Config()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param("[storage]\nsegment_bytes = 1048576\n", ["[storage]"], id="unknown-section"),
        pytest.param("[segment]\nsegment_size = 1048576\n", ["segment_size", "[segment]"], id="unknown-setting"),
        pytest.param("[read]\nsegment_bytes = 1048576\n", ["segment_bytes", "[read]"], id="setting-in-wrong-section"),
        pytest.param("[durability]\ndurability = \"full\"\n", ["durability"], id="flat-name-in-file"),
        pytest.param('[segment]\nsegment_bytes = "64MiB"\n', ["segment_bytes"], id="wrong-type-str"),
        pytest.param("[segment]\nsegment_bytes = 1048576.0\n", ["segment_bytes"], id="wrong-type-float"),
        pytest.param("[read]\nopen_segments = true\n", ["open_segments"], id="wrong-type-bool"),
        pytest.param("[segment]\nsegment_bytes = 1024\n", ["segment_bytes", "1024"], id="out-of-range"),
        pytest.param('[durability]\nmode = "fast"\n', ["fast"], id="bad-mode"),
        pytest.param("segment = 1\n", ["[segment]"], id="section-not-a-table"),
        pytest.param("[segment\n", ["not valid TOML"], id="not-toml"),
    ],
)
def test_bad_toml(text, names):
    """A bad file raises ConfigError naming the section or setting at fault."""
    _assert_config_error(lambda: _from_toml_text(text), *names)


def test_toml_error_names_the_file(tmp_path):
    """An unparsable file's error names the file; a missing one is an OSError."""
    path = tmp_path / "broken.toml"
    path.write_text("= nothing\n")
    _assert_config_error(lambda: Config.from_toml(str(path)), str(path))
    with pytest.raises(OSError):
        Config.from_toml(str(tmp_path / "missing.toml"))
