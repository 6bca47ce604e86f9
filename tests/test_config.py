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
    "tier1_level": (-7, 22),
    "tier1_frame_bytes": (256 << 10, 1 * MiB),
    "tier2_retry_max_attempts": (1, 1000),
    "tier2_retry_base_delay_ms": (0, 3_600_000),
    "tier2_retry_max_delay_ms": (0, 3_600_000),
    "admission_timeout_ms": (0, 3_600_000),
    "hydration_timeout_ms": (0, 3_600_000),
    "hydration_workers": (1, 64),
    "snapshot_every_seals": (1, 1_000_000),
    "health_activation_queue_s": (1, 86_400),
    "health_hydration_p99_ms": (1, 3_600_000),
    "health_hydration_window_s": (1, 86_400),
    "health_upload_retries_per_min": (0, 1_000_000),
    "health_flush_failures": (0, 1_000_000),
    "health_metadata_failures": (0, 1_000_000),
    "health_tier2_fetch_failures": (0, 1_000_000),
    "health_tier2_fetch_window_s": (1, 86_400),
}

#: Integer settings that may also be None (no bound, or off).
OPTIONAL_INT_SETTINGS = {
    "tier0_max_bytes": (0, 2**62),
    "tier1_max_bytes": (0, 2**62),
    "seal_interval_s": (1, 10**9),
    "retention_max_age_s": (1, 10**12),
    "retention_max_bytes": (1, 2**62),
    "retention_max_segments": (1, 2**40),
}

#: The remaining settings (strings and a fraction), with their defaults.
OTHER_SETTINGS = {
    "tier2_url": None,
    "tier2_endpoint": None,
    "tier2_region": "us-east-1",
    "tier2_access_key": None,
    "tier2_secret_key": None,
    "tier2_ca_bundle": None,
    "tier2_retry_jitter": 0.5,
}

#: TOML section of each flattened name ("durability" alone is [durability] mode).
SECTIONS = {
    "durability": aoflite.DurabilityConfig,
    "segment": aoflite.SegmentConfig,
    "read": aoflite.ReadConfig,
    "open": aoflite.OpenConfig,
    "tier0": aoflite.config.Tier0Config,
    "tier1": aoflite.config.Tier1Config,
    "tier2": aoflite.config.Tier2Config,
    "tiers": aoflite.config.TiersConfig,
    "retention": aoflite.config.RetentionConfig,
    "health": aoflite.config.HealthConfig,
}
PREFIXED = ("tier0", "tier1", "tier2", "retention", "health")


def _section_of(flat_name):
    field = "mode" if flat_name == "durability" else flat_name
    for section, cls in SECTIONS.items():
        name = field.removeprefix(f"{section}_") if section in PREFIXED else field
        if (section not in PREFIXED or name != field) and name in {a.name for a in attrs.fields(cls)}:
            return section, name
    raise AssertionError(f"no section holds {flat_name}")


def _toml(flat):
    """TOML text setting the flattened settings, each in its section."""
    tables: dict[str, list[str]] = {}
    for name, value in flat.items():
        if value is None:  # TOML has no null: leaving a setting out means its default, None
            assert Config().flat()[name] is None
            continue
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
    assert set(flat) == {"durability", *INT_SETTINGS, *OPTIONAL_INT_SETTINGS, *OTHER_SETTINGS}
    assert flat["durability"] == "normal"
    for name, (lo, hi) in INT_SETTINGS.items():
        assert lo <= flat[name] <= hi, name
    for name in OPTIONAL_INT_SETTINGS:
        assert flat[name] is None, f"{name}: tiering bounds and retention are off by default"
    for name, default in OTHER_SETTINGS.items():
        assert flat[name] == default, name


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
        **{n: st.none() | st.integers(lo, hi) for n, (lo, hi) in OPTIONAL_INT_SETTINGS.items()},
        "tier2_url": st.none() | st.sampled_from(["file:///tmp/t2", "s3://bucket/app"]),
        "tier2_retry_jitter": st.floats(0.0, 1.0),
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


@pytest.mark.parametrize("name", OPTIONAL_INT_SETTINGS)
def test_optional_integer_bounds(name):
    """A bound or interval that may be off: None or an integer in range;
    anything else raises ConfigError naming the flattened setting."""
    lo, hi = OPTIONAL_INT_SETTINGS[name]
    for good in (None, lo, hi):
        assert Config().evolve(**{name: good}).flat()[name] == good
    for bad in (lo - 1, hi + 1, float(lo), True, str(lo)):
        _assert_config_error(lambda: Config().evolve(**{name: bad}), name)


def test_tier2_strings_and_jitter():
    """Tier 2's strings are non-empty or None; jitter is a fraction."""
    for bad in ("", 5, b"s3://b"):
        _assert_config_error(lambda: Config().evolve(tier2_url=bad), "tier2_url")
    for bad in (-0.1, 1.5, "0.5", None):
        _assert_config_error(lambda: Config().evolve(tier2_retry_jitter=bad), "tier2_retry_jitter")


def test_secrets_are_not_in_repr():
    """A Config printed in a log or a traceback never shows credentials."""
    cfg = Config().evolve(tier2_access_key="AKIAEXAMPLE", tier2_secret_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(cfg) and "AKIAEXAMPLE" not in repr(cfg)


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
        pytest.param("[tier0]\nmax_bytes = -1\n", ["max_bytes", "[tier0]"], id="tier-bound-negative"),
        pytest.param("[tier0]\ntier0_max_bytes = 1\n", ["tier0_max_bytes", "[tier0]"], id="flat-name-in-tier"),
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


# ------------------------------------------------- load_config: file and environment


def test_load_config_finds_the_store_file(tmp_path):
    from aoflite.config import find_config_file, load_config

    (tmp_path / "aoflite.toml").write_text("[health]\nhydration_p99_ms = 750\n")
    assert find_config_file(str(tmp_path), env={}) == str(tmp_path / "aoflite.toml")
    assert load_config(str(tmp_path), env={}).health.hydration_p99_ms == 750
    other = tmp_path / "other.toml"
    other.write_text("[tier1]\nlevel = 5\n")
    assert load_config(str(tmp_path), env={"AOFLITE_CONFIG": str(other)}).tier1.level == 5
    named = tmp_path / "named.toml"
    named.write_text("[tier1]\nlevel = 6\n")
    assert load_config(str(tmp_path), str(named), env={"AOFLITE_CONFIG": str(other)}).tier1.level == 6
    assert load_config(str(tmp_path / "nowhere"), env={}) == Config()


def test_load_config_environment_overrides_tier2(tmp_path):
    from aoflite.config import load_config, masked

    (tmp_path / "aoflite.toml").write_text('[tier2]\nurl = "s3://b/p"\nendpoint = "http://file"\n')
    env = {
        "AOFLITE_TIER2_ENDPOINT": "https://env:9000",
        "AOFLITE_TIER2_ACCESS_KEY": "AKIDENV",
        "AOFLITE_TIER2_SECRET_KEY": "secret-env",
        "AOFLITE_TIER2_CA_BUNDLE": "/etc/ca.pem",
    }
    c = load_config(str(tmp_path), env=env)
    assert (c.tier2.url, c.tier2.endpoint, c.tier2.ca_bundle) == ("s3://b/p", "https://env:9000", "/etc/ca.pem")
    assert (c.tier2.access_key, c.tier2.secret_key) == ("AKIDENV", "secret-env")
    assert "secret-env" not in repr(c) and "AKIDENV" not in repr(c)
    shown = masked(c)["tier2"]
    assert shown["secret_key"] == shown["access_key"] == "***" and shown["ca_bundle"] == "/etc/ca.pem"


@pytest.mark.parametrize(
    "text, words",
    [
        ("[tier2]\nnope = 1\n", ["'nope'", "[tier2]"]),
        ("[health]\nhydration_p99_ms = 0\n", ["hydration_p99_ms=0", "out of range", "[health]"]),
        ("[healthz]\n", ["[healthz]"]),
        ("[tier2]\nsecret_key = 424242424242\n", ["secret_key", "value not shown"]),
        ("not toml", ["not valid TOML"]),
    ],
)
def test_load_config_refuses_naming_file_key_and_reason(tmp_path, text, words):
    from aoflite.config import load_config

    path = tmp_path / "aoflite.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path), env={})
    assert str(e.value).startswith(f"{path}: ") and str(e.value).count(str(path)) == 1
    for word in words:
        assert word in str(e.value)
    # the secret's value never shows (the message names the file, whose
    # temporary path may hold any digits: hence a value that long)
    assert "424242424242" not in str(e.value)


def test_load_config_missing_named_file(tmp_path):
    from aoflite.config import load_config

    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(None, str(tmp_path / "missing.toml"), env={})


def test_a_directory_holding_only_its_settings_file_becomes_a_store(tmp_path):
    """Configuration management may put aoflite.toml in place before the
    application first creates the store there."""
    (tmp_path / "aoflite.toml").write_text("[health]\nflush_failures = 1\n")
    with aoflite.open(tmp_path, config=aoflite.load_config(str(tmp_path), env={})) as db:
        db.append("k", b"v")
        assert db.config.health.flush_failures == 1
    assert (tmp_path / "aoflite.toml").read_text() == "[health]\nflush_failures = 1\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(aoflite.FormatError):
        aoflite.open(other)  # any other file still means: not a store
