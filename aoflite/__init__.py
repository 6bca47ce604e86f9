"""aoflite: an embedded, tiered, append-only key-log store.

    import aoflite
    with aoflite.open("app.aof") as db:
        off = db.append("sensor-1", b"reading")
        db.commit()
        print(db.read("sensor-1", off).value)
"""

from .config import Config, ConfigError, DurabilityConfig, OpenConfig, ReadConfig, SegmentConfig, load_config
from .errors import (
    BackpressureError,
    ClosedError,
    CorruptionError,
    Error,
    FencedError,
    FormatError,
    LockedError,
    NotFound,
    ReadOnlyError,
    RecordTooLarge,
    StorageError,
    Tier2Error,
    Tier2NotFound,
    TransactionError,
)
from .record import Record
from .replica import Replica, open_replica
from .restore import restore
from .store import Store, open

__version__ = "0.1.0"

__all__ = [
    "open",
    "restore",
    "open_replica",
    "Store",
    "Replica",
    "Record",
    "Config",
    "DurabilityConfig",
    "SegmentConfig",
    "ReadConfig",
    "OpenConfig",
    "load_config",
    "Error",
    "NotFound",
    "LockedError",
    "FencedError",
    "ReadOnlyError",
    "ClosedError",
    "CorruptionError",
    "FormatError",
    "RecordTooLarge",
    "BackpressureError",
    "TransactionError",
    "StorageError",
    "Tier2Error",
    "Tier2NotFound",
    "ConfigError",
]
