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
import datetime
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

import click

from . import __version__, admin, errors
from .config import ConfigError, find_config_file, load_config, masked
from .record import Record
from .store import Store
from .store import open as open_store

__all__ = ["main", "cli", "EXIT_CODES"]

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


def _until_interrupted(records: Iterator[Record]) -> Iterator[Record]:
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
    _table(rows, ["segment", "state", "tiers", "first_lsn", "last_lsn", "records", "bytes", "keys", "sealed"])


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
        ids = [r.segment_id for r in db.manifest.segments() if r.state == "sealed"]
        with click.progressbar(ids, label="verifying", file=sys.stderr, show_pos=True) as bar:
            for seg_id in bar:
                try:
                    db.verify(seg_id)
                except errors.CorruptionError as e:
                    raise _located(e) from None
    click.echo(f"{len(ids)} sealed segments verified")


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
    click.echo(f"active segment: {_cell(facts['active_segment'])}   last LSN: {facts['last_lsn']}")
    click.echo("queues: " + ", ".join(f"{q}={n}" for q, n in facts["queues"].items()))
    click.echo("backlog: " + ", ".join(f"{k}={v}" for k, v in facts["backlog"].items()))
    click.echo(json.dumps(facts, sort_keys=True, separators=(",", ":")))


@cli.group()
def manifest() -> None:
    """The manifest against the files."""


@manifest.command("check")
@_path
@_json_flag
def manifest_check(path: str, as_json: bool) -> None:
    """Every mismatch between the manifest and the local segment files; exit 5 if any."""
    with _open(path) as db:
        problems = admin.manifest_check(db)
    if as_json:
        _print_json(problems)
    elif problems:
        _table(problems, ["segment", "problem", "path"])
    else:
        click.echo("manifest and local files agree")
    if problems:
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
    click.echo(
        f"growth over {days:g} days: {facts['sealed_bytes']} bytes in {facts['sealed_segments']} sealed segments, "
        f"{facts['bytes_per_day']:.0f} bytes/day"
    )
    rows = []
    for name, b in facts["budgets"].items():
        eta = b["full_in_s"]
        rows.append(
            {
                "budget": name,
                "limit": b["budget_bytes"] if b["budget_bytes"] is not None else "none",
                "used": b["used_bytes"],
                "full in": "-" if eta is None else "now" if eta == 0 else f"{eta / 86400:.1f} days",
            }
        )
    _table(rows, ["budget", "limit", "used", "full in"])


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
