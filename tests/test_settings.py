"""Settings that shape the files are the store's: recorded at creation,
kept when a reopen does not name them, changed (and logged) when it does."""

from __future__ import annotations

import aoflite

MiB = 1 << 20


def test_shaping_settings_are_recorded_kept_and_changed(store_path):
    with aoflite.open(store_path, segment_bytes=2 * MiB, max_record_bytes=1000) as db:
        assert db.config.segment.segment_bytes == 2 * MiB
    with aoflite.open(store_path) as db:  # not named: the recorded values
        assert db.config.segment.segment_bytes == 2 * MiB
        assert db.config.segment.max_record_bytes == 1000
        try:
            db.append("k", b"x" * 1001)
        except aoflite.RecordTooLarge:
            pass
        else:
            raise AssertionError("the recorded max_record_bytes was not applied")
    with aoflite.open(store_path, segment_bytes=3 * MiB) as db:  # named: changed from now on
        assert db.config.segment.segment_bytes == 3 * MiB
        changes = [e for e in db.manifest.ledger() if e["type"] == "SettingChanged"]
        assert [(e["setting"], e["old"], e["new"]) for e in changes] == [("segment_bytes", 2 * MiB, 3 * MiB)]
    with aoflite.open(store_path, readonly=True) as ro:
        assert ro.config.segment.segment_bytes == 3 * MiB


def test_a_config_object_counts_as_naming_what_it_changes(store_path):
    aoflite.open(store_path, segment_bytes=2 * MiB).close()
    cfg = aoflite.Config().evolve(max_record_bytes=500)
    with aoflite.open(store_path, config=cfg) as db:
        assert db.config.segment.segment_bytes == 2 * MiB  # left at its default in cfg: recorded value
        assert db.config.segment.max_record_bytes == 500


def test_stats_report_data_and_disk_bytes(store_path):
    with aoflite.open(store_path) as db:
        db.append_many("k", [b"v" * 100] * 1000)
        db.seal()
        st = db.stats()
        assert st["data_bytes"] >= 100_000
        assert st["disk_bytes"] >= st["data_bytes"]
