"""The ``aoflite`` command: inspect and operate a store.

    aoflite [--config FILE] [--debug] COMMAND PATH ...
    python -m aoflite ...          (the same program)

Commands that only read open the store read-only: they work while an
application holds it open for writing, never take its writer lock and
change nothing. ``seal`` and ``flush`` open it writable, so they act only
when no process holds it (exit 7 otherwise). Output is a table by default
and JSON with ``--json``. docs/cli.md is the reference.

Exit codes: 0 success, 1 usage or configuration error, 2 not found (store,
key, segment), 3 Tier 2 authentication failure, 4 I/O error, 5 corruption,
6 unhealthy (``health``), 7 the store is held by another writer, 70 an
internal error (a bug). Errors are one line on stderr; ``--debug`` adds
the traceback.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import click

from . import __version__, admin, errors
from .coordinator import open_tier2
from .config import ConfigError, find_config_file, load_config, masked
from .record import Record
from .store import Store
from .store import open as open_store

__all__ = ["main", "cli", "EXIT_CODES"]

T = TypeVar("T")

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_IO, EXIT_CORRUPT = 0, 1, 2, 3, 4, 5
EXIT_UNHEALTHY, EXIT_LOCKED, EXIT_INTERNAL = 6, 7, 70
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USAGE: "usage or configuration error",
    EXIT_NOT_FOUND: "not found: store, key or segment",
    EXIT_AUTH: "Tier 2 authentication failure",
    EXIT_IO: "I/O error",
    EXIT_CORRUPT: "corruption found",
    EXIT_UNHEALTHY: "unhealthy (health)",
    EXIT_LOCKED: "another process holds the store for writing",
    EXIT_INTERNAL: "internal error (a bug: rerun with --debug and report it)",
}


def exit_code(e: BaseException) -> int:
    """The exit code for an error a command raised."""
    if isinstance(e, errors.CorruptionError):
        return EXIT_CORRUPT
    if isinstance(e, errors.Tier2Error) and e.reason in ("auth", "access_denied"):
        return EXIT_AUTH
    if isinstance(e, (errors.NotFound, errors.FormatError)):
        return EXIT_NOT_FOUND
    if isinstance(e, (ConfigError, ValueError, TypeError)):
        return EXIT_USAGE
    if isinstance(e, errors.LockedError):
        return EXIT_LOCKED
    if isinstance(e, (errors.Error, OSError)):
        return EXIT_IO
    return EXIT_INTERNAL


class _Program(click.Group):
    """Usage errors exit 1; aoflite's errors are one line on stderr."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "aoflite")
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:
            e.show()
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("aoflite: interrupted", err=True)
            sys.exit(EXIT_USAGE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            if ctx.params.get("debug"):
                traceback.print_exc()
            code = exit_code(e)
            what = "internal error" if code == EXIT_INTERNAL else "error"
            message = str(e) or type(e).__name__
            if isinstance(e, errors.CorruptionError) and e.path and e.path not in message:
                message += f" (file {e.path})"
            click.echo(f"aoflite: {what}: {message}", err=True)
            ctx.exit(code)


class _Options:
    def __init__(self, config: str | None, debug: bool):
        self.config = config
        self.debug = debug


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="FILE", help="Settings file (default: $AOFLITE_CONFIG, else PATH/aoflite.toml).")
@click.option("--debug", is_flag=True, help="Print the traceback of an error.")
@click.version_option(version=__version__, prog_name="aoflite")
@click.pass_context
def cli(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Inspect and operate an aoflite store."""
    ctx.obj = _Options(config, debug)


# ------------------------------------------------------------------ helpers

_path = click.argument("path", type=click.Path(file_okay=True, dir_okay=True))
_json_flag = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")


def _open(path: str, *, write: bool = False, timeout: float = 0.0) -> Store:
    """A handle on the store at path, with its settings file applied;
    read-only unless write."""
    opts = click.get_current_context().find_object(_Options)
    config = load_config(path, opts.config if opts else None)
    if write:
        config = config.evolve(lock_timeout_ms=int(timeout * 1000))
    return open_store(path, readonly=not write, config=config)


def _gather(path: str, fetch: Callable[[Store], Any], as_json: bool) -> Any:
    """fetch(db) on a read-only handle of path; with as_json printed as
    JSON, and None returned (nothing left to print)."""
    with _open(path) as db:
        facts = fetch(db)
    if as_json:
        _print_json(facts)
        return None
    return facts


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def _when(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _record_json(r: Record, text: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lsn": r.lsn,
        "key": r.key,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms,
        "batch_end": r.batch_end,
    }
    if text:
        try:
            out["value"] = r.value.decode()
            return out
        except UnicodeDecodeError:
            pass  # not text: fall back to base64, under its own name
        out["value_base64"] = base64.b64encode(r.value).decode()
    else:
        out["value"] = base64.b64encode(r.value).decode()
    return out


_FORMATS = ("raw", "hex", "json", "base64")
_format_opt = click.option(
    "--format", "fmt", type=click.Choice(_FORMATS), default="raw", show_default=True, help="How values are written."
)


def _write_records(records: Iterable[Record], fmt: str, *, all_keys: bool) -> None:
    """Each record on a line; with all_keys, prefixed by LSN and key@offset,
    and the end of each batch of several records marked."""
    out = click.get_binary_stream("stdout")
    in_batch = 0
    for r in records:
        if fmt == "json":
            line = json.dumps(_record_json(r)).encode()
        else:
            value = r.value.hex().encode() if fmt == "hex" else base64.b64encode(r.value) if fmt == "base64" else r.value
            line = (f"{r.lsn} {r.key}@{r.offset} ".encode() + value) if all_keys else value
        out.write(line + b"\n")
        in_batch += 1
        if all_keys and fmt != "json" and r.batch_end:
            if in_batch > 1:
                out.write(f"-- batch end ({in_batch} records)\n".encode())
            in_batch = 0
        if r.batch_end:
            out.flush()
    out.flush()


def _until_interrupted(records: Iterator[T]) -> Iterator[T]:
    """records, ending quietly at ^C or SIGTERM."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield from records
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- commands


@cli.command()
@_path
@_json_flag
def info(path: str, as_json: bool) -> None:
    """Format, settings, segments, sizes, LSN and time range, keys, lock holder, cursors."""
    facts = _gather(path, admin.info, as_json)
    if facts is None:
        return
    rows = [
        ("path", facts["path"]),
        ("format version", facts["format_version"]),
        ("store id", facts["store_id"]),
        ("created", _when(facts["created_ms"])),
        ("settings", ", ".join(f"{k}={v}" for k, v in sorted(facts["settings"].items()))),
        ("segments", f"{facts['segments']['sealed']} sealed, {facts['segments']['active']} active"),
        ("data bytes", facts["data_bytes"]),
        ("disk bytes", facts["disk_bytes"]),
        ("LSN range", f"{facts['lsn']['first']} .. {facts['lsn']['last']}"),
        ("time range", f"{_when(facts['time_ms']['first'])} .. {_when(facts['time_ms']['last'])}"),
        ("keys", facts["keys"]),
        ("writer pid", facts["lock_holder_pid"] or "none"),
        ("manifest version", facts["manifest_version"]),
        ("cursors", ", ".join(f"{c['name']}@{c['lsn']} (lag {c['lag_records']})" for c in facts["cursors"]) or "none"),
    ]
    for name, value in rows:
        click.echo(f"{name + ':':<18}{_cell(value)}")


@cli.command()
@_path
@_json_flag
def keys(path: str, as_json: bool) -> None:
    """Every key and its record count."""
    rows = _gather(path, lambda db: [{"key": k, "records": db.count(k)} for k in db.keys()], as_json)
    if rows is not None:
        _table(rows, ["key", "records"])


@cli.command()
@_path
@click.argument("key")
@click.option("--from", "start", type=click.IntRange(0), default=0, help="First offset.")
@click.option("--to", "to", type=click.IntRange(0), default=None, help="Last offset (inclusive).")
@_format_opt
def cat(path: str, key: str, start: int, to: int | None, fmt: str) -> None:
    """Values of KEY, one per line, by offset."""
    with _open(path) as db:
        if db.count(key) == 0:
            raise errors.NotFound(f"{db.path}: no key {key!r} in the store")
        _write_records(db.scan(key, start, None if to is None else to + 1), fmt, all_keys=False)


@cli.command()
@_path
@click.argument("key", required=False)
@click.option("-f", "--follow", is_flag=True, help="Wait for new records (^C to stop).")
@click.option("-n", "lines", type=click.IntRange(0), default=10, show_default=True, help="Records shown first.")
@click.option("--idle-timeout", type=click.FloatRange(0), default=None, help="With -f: stop after this many idle seconds.")
@_format_opt
def tail(path: str, key: str | None, follow: bool, lines: int, idle_timeout: float | None, fmt: str) -> None:
    """The last records of KEY, or of every key in LSN order (marking where
    batches end); with -f, then each new one as it is committed."""
    with _open(path) as db:
        records: Iterator[Record]
        if key is not None:
            if db.count(key) == 0 and not follow:
                raise errors.NotFound(f"{db.path}: no key {key!r} in the store")
            start = max(0, db.count(key) - lines)
            records = db.tail(key, start, idle_timeout) if follow else db.scan(key, start)
        else:
            last = admin.dump(db)["last_lsn"]
            start = max(1, last - lines + 1)
            records = db.tail_all(start, idle_timeout) if follow else db.scan_all(start)
        _write_records(_until_interrupted(records), fmt, all_keys=key is None)


@cli.command()
@_path
@click.option("--since", type=click.IntRange(0), default=1, show_default=True, help="First sequence number.")
@_json_flag
def ledger(path: str, since: int, as_json: bool) -> None:
    """The manifest's ledger: every lifecycle event, in order."""
    events = _gather(path, lambda db: list(db.manifest.ledger(since)), as_json)
    if events is None:
        return
    rows = [
        {
            "seq": e["seq"],
            "time": _when(e["time_ms"]),
            "type": e["type"],
            "fields": {k: v for k, v in e.items() if k not in ("seq", "type", "time_ms")},
        }
        for e in events
    ]
    _table(rows, ["seq", "time", "type", "fields"])


@cli.command()
@_path
@click.option("--from-lsn", type=click.IntRange(0), default=1, show_default=True, help="First LSN.")
@click.option("--to-lsn", type=click.IntRange(0), default=None, help="Last LSN (inclusive).")
@click.option("--jsonl", is_flag=True, default=True, help="One JSON object per record (the only format, the default).")
@click.option("--text", is_flag=True, help="Values as UTF-8 text instead of base64 (value_base64 when not text).")
def export(path: str, from_lsn: int, to_lsn: int | None, jsonl: bool, text: bool) -> None:
    """Every record in LSN order as JSON lines: lsn, key, offset, timestamp_ms, batch_end, value."""
    with _open(path) as db:
        for r in db.scan_all(from_lsn):
            if to_lsn is not None and r.lsn > to_lsn:
                break
            click.echo(json.dumps(_record_json(r, text), ensure_ascii=False))


@cli.command()
@_path
@click.argument("dest", type=click.Path())
def backup(path: str, dest: str) -> None:
    """A consistent copy of the store at DEST (a new path), while appends go on."""
    with _open(path) as db:
        lsn = db.backup(dest)
    click.echo(f"backed up {path} to {dest}: every record up to LSN {lsn}")


@cli.command()
@_path
@_json_flag
def cursors(path: str, as_json: bool) -> None:
    """Consumer cursors and how far each trails the store."""
    rows = _gather(path, lambda db: [c._asdict() for c in db.cursors()], as_json)
    if rows is not None:
        _table(rows, ["name", "lsn", "lag_records", "lag_bytes"])


@cli.group()
def segments() -> None:
    """Segments and their tiers."""


@segments.command("list")
@_path
@click.option("--tier", type=click.IntRange(0, 2), default=None, help="Only segments with a copy in this tier.")
@click.option("--key", default=None, help="Only segments holding records of this key.")
@_json_flag
def segments_list(path: str, tier: int | None, key: str | None, as_json: bool) -> None:
    """One line per segment: state, tiers, LSN range, records, bytes."""
    rows = _gather(path, lambda db: admin.segments(db, tier, key), as_json)
    if rows is None:
        return
    for row in rows:
        row["sealed"] = _when(row.pop("sealed_ms"))
        row.pop("created_ms")
        row.update({t: row["tiers"].get(t) for t in ("t0", "t1", "t2")})
    _table(rows, ["segment", "state", "t0", "t1", "t2", "first_lsn", "last_lsn", "records", "bytes", "keys", "sealed"])


@segments.command("delete")
@_path
@click.argument("segment", type=click.IntRange(0))
@click.option("--tier", type=click.IntRange(0, 2), required=True, help="The tier whose copy goes.")
@click.option("--force", is_flag=True, help="Allow deleting the Tier 2 copy (never a segment's last copy).")
@_json_flag
def segments_delete(path: str, segment: int, tier: int, force: bool, as_json: bool) -> None:
    """Delete one tier's copy of a sealed segment; never its last copy.
    Opens the store writable (exit 7 while another process holds it)."""
    with _open(path, write=True) as db:
        done = admin.delete_copy(db, segment, tier, force)
    if as_json:
        _print_json(done)
    else:
        click.echo(
            f"deleted segment {segment}'s Tier {tier} copy ({done['bytes']} bytes); "
            f"copies left: {', '.join(done['remaining'])}"
        )


_timeout = click.option(
    "--timeout", type=click.FloatRange(0), default=0.0, show_default=True,
    help="Seconds to wait for another writer to close the store.",
)


@cli.command()
@_path
@_timeout
def seal(path: str, timeout: float) -> None:
    """Seal the active segment now (before a release, say)."""
    with _open(path, write=True, timeout=timeout) as db:
        sealed = db.seal()
    click.echo(f"sealed segment {sealed}" if sealed is not None else "nothing to seal: the active segment is empty")


@cli.command()
@_path
@_timeout
def flush(path: str, timeout: float) -> None:
    """Make everything appended durable (recovering the store if a writer died)."""
    with _open(path, write=True, timeout=timeout) as db:
        lsn = db.commit()
    click.echo(f"durable up to LSN {lsn}")


@cli.command()
@_path
def verify(path: str) -> None:
    """Check every sealed segment (file CRC, records, index, manifest); exit 5 on corruption."""
    with _open(path) as db:
        n = _verify_all(db)
    click.echo(f"{n} sealed segments verified")


def _verify_all(db: Store) -> int:
    """db.verify() of every sealed segment with a progress bar on stderr;
    corruption named by file and byte position. Returns how many."""
    ids = [r.segment_id for r in db.manifest.segments() if r.state == "sealed"]
    with click.progressbar(ids, label="verifying", file=sys.stderr, show_pos=True) as bar:
        for seg_id in bar:
            try:
                db.verify(seg_id)
            except errors.CorruptionError as e:
                raise _located(e) from None
    return len(ids)


@cli.command()
@_path
@click.option("--segment", type=click.IntRange(0), default=None, help="The segment to bring back.")
@click.option("--key", default=None, help="Bring back the segments holding this key's records.")
@click.option("--from", "start", type=click.IntRange(0), default=0, help="With --key: first offset.")
@click.option("--to", "to", type=click.IntRange(0), default=None, help="With --key: last offset (inclusive).")
@_json_flag
def hydrate(path: str, segment: int | None, key: str | None, start: int, to: int | None, as_json: bool) -> None:
    """Bring evicted segments back to local disk, with a progress bar, and
    report what came from where. Read-only: works beside a live writer
    (whose budgets may evict the files again)."""
    if (segment is None) == (key is None):
        raise click.UsageError("give --segment ID or --key KEY")
    if key is None and (start or to is not None):
        raise click.UsageError("--from and --to go with --key")
    with _open(path) as db:
        targets = admin.hydration_targets(db, segment, key, start, None if to is None else to + 1)
        todo = [t for t in targets if t["source"] != "t0"]
        hydrator = db._hydrator
        assert hydrator is not None
        window = 32  # the hydrator's queue is bounded: never more in flight than this
        with click.progressbar(length=len(todo), label="hydrating", file=sys.stderr, show_pos=True) as bar:
            inflight: list[Any] = []
            for t in todo:
                inflight.append(hydrator.start(t["segment"]))
                if len(inflight) >= window:
                    inflight.pop(0).result()
                    bar.update(1)
            for fut in inflight:
                fut.result()
                bar.update(1)
    if as_json:
        _print_json(targets)
        return
    for t in todo:
        click.echo(f"segment {t['segment']}: fetched from {t['source']} ({t['bytes']} bytes)")
    click.echo(
        f"hydrated {len(todo)} segments ({sum(t['bytes'] for t in todo)} bytes); {len(targets) - len(todo)} already local"
    )


def _located(e: errors.CorruptionError) -> errors.CorruptionError:
    """e naming the file and the byte position of its first bad record
    (a whole-file checksum error alone says neither)."""
    position = None
    if e.path:
        try:
            position = admin.locate_corruption(e.path)
        except errors.Error:
            pass  # the file does not even open: e says why
    if position is None:
        position = e.position
    if position is None:
        return e
    return errors.CorruptionError(f"{e} (file {e.path}, first bad record at byte {position})", e.path, position)


@cli.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("show")
@click.argument("path", required=False)
@_json_flag
def config_show(path: str | None, as_json: bool) -> None:
    """The settings that apply to PATH, credentials masked."""
    opts = click.get_current_context().find_object(_Options)
    config_path = opts.config if opts else None
    shown = masked(load_config(path, config_path))
    source = find_config_file(path, config_path)
    if as_json:
        _print_json({"source": source, "settings": shown})
        return
    click.echo(f"# from {source or 'defaults'} and the AOFLITE_TIER2_* environment")
    for section, values in shown.items():
        click.echo(f"\n[{section}]")
        for name, value in values.items():
            click.echo(f"{name} = {json.dumps(value)}" if value is not None else f"# {name} is unset")


@cli.command()
@_path
@_json_flag
def health(path: str, as_json: bool) -> None:
    """The alert thresholds applied to the store; exit 6 when one alerts."""
    with _open(path) as db:
        report = db.health()
    if as_json:
        _print_json(report.to_dict())
    else:
        verdict = "healthy" if report.healthy else f"UNHEALTHY: tiers {', '.join(report.impacted_tiers)}"
        click.echo(f"{report.store}: {verdict}")
        rows = [
            {"check": c.name, "state": c.state, "tier": c.tier, "value": c.value, "threshold": c.threshold}
            for c in report.checks
        ]
        _table(rows, ["check", "state", "tier", "value", "threshold"])
        for c in report.checks:
            if c.state == "alert":
                click.echo(f"\n{c.alert} ({c.tier}): {c.detail}\n  mitigation: {c.mitigation}\n  runbook: {c.runbook}")
    if not report.healthy:
        click.get_current_context().exit(EXIT_UNHEALTHY)


@cli.command()
@_path
@click.option("--serve", metavar="HOST:PORT", default=None, help="Serve /metrics until interrupted.")
def metrics(path: str, serve: str | None) -> None:
    """The store's Prometheus metrics, once or served."""
    with _open(path) as db:
        if serve is None:
            click.echo(db.metrics.exposition().decode(), nl=False)
            return
        host, sep, port = serve.rpartition(":")
        if not sep or not port.isdigit():
            raise click.BadParameter("expected HOST:PORT", param_hint="--serve")
        with db.serve_metrics(int(port), host or "127.0.0.1") as server:
            click.echo(f"serving http://{server.addr}:{server.port}/metrics (^C to stop)", err=True)
            for _ in _until_interrupted(_forever()):
                pass


def _forever() -> Iterator[Record]:
    while True:
        time.sleep(3600)
        yield from ()


@cli.command()
@_path
@_json_flag
def dump(path: str, as_json: bool) -> None:
    """What is where: segments and bytes per tier, the active segment, queues, backlog."""
    facts = _gather(path, admin.dump, as_json)
    if facts is None:
        return
    rows = [{"tier": t, **v} for t, v in facts["tiers"].items()]
    _table(rows, ["tier", "segments", "bytes"])
    click.echo(
        f"active segment: {_cell(facts['active_segment'])} ({facts['active_records']} records, "
        f"{facts['active_bytes']} bytes)   last LSN: {facts['last_lsn']}"
    )
    click.echo("queues: " + ", ".join(f"{q}={_cell(n)}" for q, n in facts["queues"].items()))
    click.echo(f"backlog (Tier 2 {facts['tier2_url'] or 'not configured'}): " + ", ".join(
        f"{k.removeprefix('tier2_')}={_cell(v)}" for k, v in facts["backlog"].items()
    ))
    if facts["tier_error"]:
        click.echo(f"pipeline error: {facts['tier_error']}")
    click.echo(json.dumps(facts, sort_keys=True, separators=(",", ":")))


@cli.group()
def manifest() -> None:
    """The manifest against the files."""


@manifest.command("check")
@_path
@click.option("--repair", is_flag=True, help="Fix what is safe (opens the store writable) and say what was done.")
@_json_flag
def manifest_check(path: str, repair: bool, as_json: bool) -> None:
    """Every mismatch between the manifest, the local files and the Tier 2
    objects; exit 5 if any (with --repair: any left unrepaired)."""
    def found(db: Store) -> list[dict[str, Any]]:
        problems = admin.manifest_check(db)
        backend = open_tier2(db.config)
        return problems + (admin.tier2_compare(db, backend) if backend is not None else [])

    with _open(path) as db:
        problems = found(db)
        has_t2 = db.config.tier2.url is not None
    if repair and problems:
        with _open(path, write=True) as db:
            admin.quiet_pipeline(db)
            now = found(db)
            still = {(p["kind"], p["segment"], p["path"]) for p in now}
            at_open = [
                {**p, "repair": "fixed when the store opened for writing (recovery or the tier pipeline: see aoflite ledger)"}
                for p in problems
                if (p["kind"], p["segment"], p["path"]) not in still
            ]
            problems = at_open + admin.repair(db, now)
    left = [p for p in problems if not repair or p["repair"].startswith("left alone")]
    if as_json:
        _print_json(problems)
    elif problems:
        _table(problems, ["segment", "problem", "path", *(["repair"] if repair else [])])
    else:
        click.echo("manifest, local files and Tier 2 agree" if has_t2 else "manifest and local files agree")
    if left:
        click.get_current_context().exit(EXIT_CORRUPT)


@cli.group("tier2")
def tier2_group() -> None:
    """The Tier 2 object store."""


@tier2_group.command("check")
@_path
@_json_flag
def tier2_check(path: str, as_json: bool) -> None:
    """Bucket reachable, credentials valid (exit 3 if not), every object
    the manifest records present at its size and checksum, no orphans,
    retention's deletions done; exit 5 on any problem."""
    with _open(path) as db:
        facts = admin.tier2_check(db)
    if as_json:
        _print_json(facts)
    else:
        click.echo(
            f"{facts['url']}: reachable, credentials valid; {facts['objects']} objects, "
            f"{facts['segments_checked']} segments checked, {facts['queued_deletes']} deletions queued"
        )
        if facts["problems"]:
            _table(facts["problems"], ["check", "segment", "problem", "path"])
        else:
            click.echo("objects, manifest and retention agree")
    if facts["problems"]:
        click.get_current_context().exit(EXIT_CORRUPT)


@cli.command()
@_path
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=7.0, show_default=True,
              help="Growth measured over this many days.")
@_json_flag
def capacity(path: str, days: float, as_json: bool) -> None:
    """Growth rate from the ledger, and when each budget fills at that rate."""
    facts = _gather(path, lambda db: admin.capacity(db, days), as_json)
    if facts is None:
        return
    ratio = facts["tier1_ratio"]
    click.echo(
        f"growth over {days:g} days: {facts['sealed_bytes']} bytes in {facts['sealed_segments']} sealed segments, "
        f"{facts['bytes_per_day']:.0f} bytes/day"
        + (f"; Tier 1 keeps {ratio:.2f} of each segment's bytes" if ratio is not None else "")
    )
    rows = []
    for name, b in facts["budgets"].items():
        eta = b["full_in_s"]
        rows.append(
            {
                "budget": name,
                "limit": b["budget_bytes"] if b["budget_bytes"] is not None else "none",
                "used": b["used_bytes"],
                "growth/day": f"{b['growth_bytes_per_day']:.0f}",
                "full in": "-" if eta is None else "now" if eta == 0 else f"{eta / 86400:.1f} days",
                "then": b["then"],
            }
        )
    _table(rows, ["budget", "limit", "used", "growth/day", "full in", "then"])


@cli.command()
@_path
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between frames.")
@click.option("--once", is_flag=True, help="Print one frame (over one interval) and stop.")
@click.option("--metrics-url", default=None, metavar="URL",
              help="The writer's /metrics (aoflite metrics --serve, db.serve_metrics): adds flush rate and latency, "
                   "backpressure and the activation queue, which only the writing process knows.")
@_json_flag
def top(path: str, interval: float, once: bool, metrics_url: str | None, as_json: bool) -> None:
    """A live view, redrawn every interval: append and flush rates, flush
    latency, queues, bytes per tier, backpressure, cursor lag. ^C stops."""

    def take(db: Store) -> dict[str, Any]:
        got = admin.sample(db)
        if metrics_url is not None:
            import urllib.request

            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                got["writer"] = admin.scraped(r.read().decode())
        return got

    with _open(path) as db:
        prev = take(db)
        for _ in _until_interrupted(_ticks(interval)):
            cur = take(db)
            frame = admin.rates(prev, cur)
            prev = cur
            if as_json:
                click.echo(json.dumps(frame, sort_keys=True))
            else:
                if not once:
                    click.clear()
                _top_frame(db.path, frame)
            if once:
                return


def _ticks(interval: float) -> Iterator[None]:
    while True:
        time.sleep(interval)
        yield None


def _top_frame(path: str, f: dict[str, Any]) -> None:
    def num(v: float | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:,.1f}{unit}"

    unknown = "" if f["flushes_per_s"] is not None else "   (flushes, backpressure: --metrics-url of the writer)"
    click.echo(f"aoflite top {path}   every {f['interval_s']:.1f} s   last LSN {f['last_lsn']}")
    click.echo(
        f"appends: {num(f['append_records_per_s'])} records/s, {num(f['append_bytes_per_s'])} bytes/s   "
        f"flushes: {num(f['flushes_per_s'])}/s, latency {num(f['flush_latency_ms'], ' ms')}{unknown}"
    )
    click.echo("queues:  " + ", ".join(f"{q}={_cell(n)}" for q, n in f["queues"].items()))
    click.echo("tiers:   " + ", ".join(f"{t}: {v['segments']} segments {v['bytes']} bytes" for t, v in f["tiers"].items()))
    click.echo("backlog: " + ", ".join(f"{k.removeprefix('tier2_')}={_cell(v)}" for k, v in f["backlog"].items()))
    bp = f["backpressure"]
    click.echo("backpressure: " + ("-" if bp is None else ", ".join(f"{k}={n}" for k, n in sorted(bp.items()))))
    lag = f["cursor_lag"]
    click.echo("cursor lag: " + (", ".join(f"{n}={r} records" for n, r in sorted(lag.items())) or "no cursors"))
    if f["tier_error"]:
        click.echo(f"pipeline error: {f['tier_error']}")


def _restore_function() -> Callable[..., int]:
    """aoflite.restore, looked up when a command runs (so a test can stand in for it)."""
    import aoflite

    return aoflite.restore


def _tier2_settings() -> dict[str, Any]:
    """The Tier 2 connection settings that --config and the AOFLITE_TIER2_*
    environment give, as restore's keyword settings."""
    opts = click.get_current_context().find_object(_Options)
    config = load_config(None, opts.config if opts else None)
    defaults = type(config)().flat()
    return {
        k: v for k, v in config.flat().items()
        if k.startswith("tier2_") and k != "tier2_url" and v != defaults[k]
    }


@cli.command()
@click.argument("tier2_url")
@click.argument("path", type=click.Path())
@click.option("--as-of-lsn", type=click.IntRange(1), default=None, help="Stop at this LSN (a whole transaction or nothing).")
@click.option("--as-of-time-ms", type=click.IntRange(0), default=None, help="Stop at this time (ms since the epoch).")
def restore(tier2_url: str, path: str, as_of_lsn: int | None, as_of_time_ms: int | None) -> None:
    """Recreate a store at PATH (a new path) from Tier 2 alone; segments
    come back on read."""
    if as_of_lsn is not None and as_of_time_ms is not None:
        raise click.UsageError("give --as-of-lsn or --as-of-time-ms, not both")
    restore_fn = _restore_function()
    last = restore_fn(tier2_url, path, as_of_lsn=as_of_lsn, as_of_time_ms=as_of_time_ms, **_tier2_settings())
    click.echo(f"restored {tier2_url} to {path}: every record up to LSN {last}")


@cli.command()
@click.argument("tier2_url")
@click.option("--store", "live", type=click.Path(), default=None,
              help="The live store to compare with (its manifest is read, read-only).")
@click.option("--scratch", type=click.Path(), default=None, help="Restore here (a new path) and keep it.")
@_json_flag
def drill(tier2_url: str, live: str | None, scratch: str | None, as_json: bool) -> None:
    """The disaster-recovery rehearsal: restore TIER2_URL into a scratch
    directory, verify every segment, compare LSN ranges and counts with the
    live store's manifest and say how far the bucket trails it; exit 5 on
    any difference or damage."""
    import shutil
    import tempfile

    restore_fn = _restore_function()
    workdir = None
    if scratch is None:
        workdir = tempfile.mkdtemp(prefix="aoflite-drill-")
        scratch = os.path.join(workdir, "store")
    try:
        started = time.monotonic()
        last = restore_fn(tier2_url, scratch, **_tier2_settings())
        with open_store(scratch, readonly=True) as copy:
            _verify_all(copy)
            with _open(live) if live is not None else contextlib.nullcontext() as db:
                report = admin.drill_report(copy, last, db)
        report["seconds"] = round(time.monotonic() - started, 3)
        report["scratch"] = None if workdir is not None else scratch
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        _print_json(report)
    else:
        click.echo(
            f"restored {report['segments']} sealed segments, LSN {report['first_lsn']} .. {report['last_lsn']}, "
            f"every one verified, in {report['seconds']} s"
        )
        if report["trails"] is not None:
            t = report["trails"]
            click.echo(f"the bucket trails the store by {t['records']} records ({t['segments']} segments, {t['seconds']:.0f} s)")
        if report["differences"]:
            _table(report["differences"], ["segment", "problem"])
    if report["differences"]:
        click.get_current_context().exit(EXIT_CORRUPT)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Write a demo workload to a new store and report on it ([PATH] [--records N] [--keys K])."""
    from .demo import main as demo_main

    try:
        code = demo_main(list(args))
    except SystemExit as e:  # argparse's usage error is 2: ours is 1
        code = EXIT_USAGE if e.code == 2 else int(e.code or 0)
    click.get_current_context().exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``aoflite`` console script and ``python -m aoflite``."""
    cli.main(args=argv, prog_name="aoflite")
