"""Command line of the buffer: ``buffer_app`` (``serve``, ``stats``) and the ``consume`` command.

The main CLI mounts them as ``photonstream buffer serve|stats`` and ``photonstream consume``; this module also
runs on its own (``python -m photonstream.buffer.cli serve ...``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import zmq

from photonstream.buffer import protocol as P
from photonstream.errors import ConfigError, PhotonstreamError

buffer_app = typer.Typer(help="The high-rate data buffer service.", no_args_is_help=True, add_completion=False)

MB = 1 << 20
GB = 1 << 30
CONNECT_TIMEOUT_S = 10.0  # consume: a buffer on this host or a facility network answers a SUB in well under 1 s
START_TIMEOUT_S = 120.0  # consume: a stream queued behind others starts later; 0 waits for good
WAITING_LINE_AFTER_S = 2.0


def _fail(exc: PhotonstreamError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)  # 2: what was asked is wrong; 1: it failed


@buffer_app.command("serve")
def serve(
    bind: Annotated[str, typer.Option(help="ZeroMQ endpoint to bind")] = "tcp://127.0.0.1:5600",
    data_dir: Annotated[Path | None, typer.Option(help="durable streams and spill files go here")] = None,
    memory_mb: Annotated[float, typer.Option(help="memory budget of all streams (MB)")] = 4096,
    stream_memory_mb: Annotated[float, typer.Option(help="memory budget of one stream (MB)")] = 1024,
    disk_gb: Annotated[float | None, typer.Option(help="disk budget of all streams (GB)")] = None,
    stream_disk_gb: Annotated[float | None, typer.Option(help="disk budget of one stream (GB)")] = None,
    retention_gb: Annotated[float | None, typer.Option(help="keep at most this much per stream (GB)")] = None,
    retention_s: Annotated[float | None, typer.Option(help="keep messages at most this long (s)")] = None,
    segment_mb: Annotated[float, typer.Option(help="segment file size (MB)")] = 256,
    max_message_mb: Annotated[float, typer.Option(help="refuse larger producer messages (MB)")] = 1024,
    ack_timeout_s: Annotated[float, typer.Option(help="lossless: redeliver after this long unacked")] = 30.0,
    member_timeout_s: Annotated[float, typer.Option(help="a silent consumer leaves after this long")] = 10.0,
    no_spill: Annotated[bool, typer.Option("--no-spill", help="never spill non-durable streams to disk")] = False,
    fsync: Annotated[bool, typer.Option(help="fsync durable data every second")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics on this HTTP port")] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            help="buffer.key_secret (created if missing) and admins/*.key (the API's key): share with the API"
        ),
    ] = None,
    security: Annotated[
        str | None,
        typer.Option(help="curve (default with --keys-dir), token, or none (no authentication: tests and demos)"),
    ] = None,
    token_bind: Annotated[
        str | None, typer.Option(help="also listen here with token security (authenticated, plaintext)")
    ] = None,
) -> None:
    """Run the buffer service until interrupted."""
    from photonstream.buffer.service import BufferService, BufferSettings, tune_allocator

    def gb(value: float | None) -> int | None:
        return None if value is None else int(value * GB)

    try:
        settings = BufferSettings.build(
            bind=bind,
            data_dir=data_dir,
            memory_total=int(memory_mb * MB),
            memory_per_stream=int(stream_memory_mb * MB),
            disk_total=gb(disk_gb),
            disk_per_stream=gb(stream_disk_gb),
            retention_bytes=gb(retention_gb),
            retention_s=retention_s,
            segment_bytes=int(segment_mb * MB),
            max_message_bytes=int(max_message_mb * MB),
            ack_timeout_s=ack_timeout_s,
            member_timeout_s=member_timeout_s,
            spill=not no_spill,
            fsync=fsync,
            keys_dir=keys_dir,
            security=security or ("curve" if keys_dir is not None else "none"),
            token_bind=token_bind,
        )
        if not settings.secured:
            typer.echo("WARNING: no authentication (no --keys-dir): anyone who reaches the port reads and writes "
                       "every stream; use this only for tests and demos", err=True)  # fmt: skip
        tune_allocator()  # this process is the service: let it reuse payload buffers
        service = BufferService(settings)
        if metrics_port is not None:
            from photonstream.buffer.metrics import serve_metrics

            serve_metrics(service, metrics_port)
        signal.signal(signal.SIGTERM, lambda *_: service.stop(timeout=0))
        endpoint = service.start()
        typer.echo(f"buffer serving on {endpoint}" + (f", data in {data_dir}" if data_dir else ""), err=True)
        while service._thread is not None and service._thread.is_alive():
            service._thread.join(0.5)
    except PhotonstreamError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        service.stop()


def fetch_stats(endpoint: str, timeout_s: float = 5.0, credentials: Any = None) -> dict[str, Any]:
    """Ask a running buffer for its state (the JSON of ``photonstream buffer stats``); a secured buffer needs
    ``credentials`` (``photonstream.buffer.credentials.Credentials``: an admin key sees every stream)."""
    from photonstream.client import ConsumerError

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        credentials.apply(sock)
    try:
        sock.connect(endpoint)
        sock.send_multipart([P.envelope(P.STATS)])
        if not sock.poll(int(timeout_s * 1000)):
            raise ConsumerError(f"buffer {endpoint}: no answer in {timeout_s:g} s")
        parts = sock.recv_multipart()
        return json.loads(parts[1])
    finally:
        sock.close()


@buffer_app.command("stats")
def stats(
    endpoint: Annotated[str, typer.Argument(help="buffer endpoint")] = "tcp://127.0.0.1:5600",
    prometheus: Annotated[bool, typer.Option(help="print Prometheus text instead of JSON")] = False,
    timeout_s: Annotated[float, typer.Option(help="give up after this long")] = 5.0,
    keys_dir: Annotated[
        Path | None, typer.Option(help="a secured buffer's keys directory: ask with the API's admin key")
    ] = None,
) -> None:
    """Print the buffer's state per stream and group: in/out, rates, lag, memory and disk fill, losses."""
    try:
        credentials = None
        if keys_dir is not None:
            from photonstream.buffer.credentials import Credentials, load_keypair, load_public_key

            public, secret = load_keypair(keys_dir / "api.key_secret")
            credentials = Credentials.curve(load_public_key(keys_dir / "buffer.key"), public, secret)
        state = fetch_stats(endpoint, timeout_s, credentials)
    except PhotonstreamError as exc:
        _fail(exc)
    if prometheus:
        from photonstream.buffer.metrics import render

        sys.stdout.write(render(state))
    else:
        typer.echo(json.dumps(state, indent=2))


def consume(
    endpoint: Annotated[str, typer.Argument(help="buffer endpoint, e.g. tcp://127.0.0.1:5600")],
    stream: Annotated[str, typer.Argument(help="experiment/run/stream-id")],
    group: Annotated[str, typer.Option(help="consumer group")] = "default",
    policy: Annotated[str, typer.Option(help="lossless | latest | decimate:N | sample:RATE")] = "lossless",
    start: Annotated[str, typer.Option(help="beginning | newest | offset:N | time:T")] = "beginning",
    credit: Annotated[int, typer.Option(help="messages the buffer may send ahead")] = 16,
    decode: Annotated[bool, typer.Option(help="decode messages (off: count raw bytes only)")] = True,
    max_messages: Annotated[int | None, typer.Option(help="stop after this many data messages")] = None,
    timeout_s: Annotated[float | None, typer.Option(help="fail after this long without word from the buffer")] = None,
    connect_timeout_s: Annotated[
        float, typer.Option(min=0, help="fail when the buffer has not answered in this long (0: wait for good)")
    ] = CONNECT_TIMEOUT_S,
    start_timeout_s: Annotated[
        float, typer.Option(min=0, help="fail when the stream has not started in this long (0: wait for good)")
    ] = START_TIMEOUT_S,
    json_summary: Annotated[bool, typer.Option("--json", help="print the final summary as JSON")] = False,
    credentials: Annotated[
        Path | None,
        typer.Option(
            help="the stream's create response (request create --save): its credential "
            "(default: $PHOTONSTREAM_BUFFER_CREDENTIALS, if set)"
        ),
    ] = None,
    security: Annotated[str | None, typer.Option(help="with --credentials: curve or token link")] = None,
) -> None:
    """Read a stream from the buffer, printing a live rate/lag line and a final summary."""
    from photonstream.buffer.credentials import Credentials
    from photonstream.client import subscribe

    try:
        link = None
        if credentials is not None:
            try:
                info = json.loads(credentials.read_text())
            except (OSError, ValueError) as exc:  # ValueError: not JSON, or not text (UnicodeDecodeError)
                raise ConfigError(f"{credentials}: cannot read the create response ({exc})") from None
            try:
                _, link = Credentials.from_endpoint(info, security)  # type: ignore[arg-type]
            except ConfigError as exc:
                raise ConfigError(f"{credentials}: {exc}") from None
        else:  # a worker started by the API (elastic pools) gets its credential in the environment
            link = Credentials.from_env()
        sub = subscribe(endpoint, stream, group=group, policy=policy, start=start, credit=credit,
                        decode=decode, timeout_s=timeout_s, credentials=link,
                        connect_timeout_s=connect_timeout_s or None, start_timeout_s=start_timeout_s or None,
                        on_idle=_say_waiting())  # fmt: skip
    except PhotonstreamError as exc:
        _fail(exc)
    began = time.perf_counter()
    shown_at = began
    interrupted = False
    try:
        for _ in sub:
            now = time.perf_counter()
            if now - shown_at >= 1.0:
                shown_at = now
                _live_line(sub.stats, now - began)
            if max_messages is not None and sub.stats.yielded >= max_messages:
                break
    except KeyboardInterrupt:
        interrupted = True
    except PhotonstreamError as exc:
        sub.close()
        _fail(exc)
    sub.close()
    elapsed = time.perf_counter() - began
    s = sub.stats
    summary = {
        "stream": stream, "group": group, "policy": policy, "messages": s.yielded, "bytes": s.bytes,
        "seconds": round(elapsed, 3), "msgs_per_s": round(s.yielded / elapsed, 2) if elapsed else 0.0,
        "mb_per_s": round(s.bytes / elapsed / 1e6, 2) if elapsed else 0.0, "duplicates_dropped": s.duplicates,
        "skipped": s.skipped, "expired": s.expired, "redelivered": s.redelivered,
        "ended": sub.end is not None or (not decode and sub._done and not interrupted),
        "end_reason": sub.end.reason if sub.end is not None else None,
    }  # fmt: skip
    sys.stderr.write("\n")
    if json_summary:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['messages']} messages, {s.bytes / 1e6:.1f} MB in {elapsed:.1f} s "
            f"({summary['msgs_per_s']} msg/s, {summary['mb_per_s']} MB/s); skipped {s.skipped}, "
            f"expired {s.expired}, duplicates dropped {s.duplicates}"
            + (f"; stream ended ({summary['end_reason']})" if summary["end_reason"] else "")
        )


def _say_waiting() -> Callable[[Any], None]:
    """Once, after WAITING_LINE_AFTER_S: what consume waits for (a buffer that does not answer, or a stream that
    has not started), so a wait is never silent."""
    began, said = time.monotonic(), []

    def on_idle(sub: Any) -> None:
        if said or time.monotonic() - began < WAITING_LINE_AFTER_S:
            return
        said.append(True)
        if sub.waiting_for_start:
            what = f"waiting for stream {sub.stream} to start (the buffer at {sub.endpoint} answers)"
        elif sub.stats.yielded == 0 and sub.start is None:
            what = f"waiting for an answer from the buffer at {sub.endpoint}"
        else:
            return
        sys.stderr.write(f"{what}; Ctrl-C stops\n")
        sys.stderr.flush()

    return on_idle


def _live_line(s: Any, elapsed: float) -> None:
    sys.stderr.write(
        f"\r{s.yielded} msgs  {s.yielded / elapsed:8.1f} msg/s  {s.bytes / elapsed / 1e6:8.1f} MB/s  "
        f"lag {s.lag}  skipped {s.skipped}   "
    )
    sys.stderr.flush()


consume_app = typer.Typer(add_completion=False)
consume_app.command("consume")(consume)

if __name__ == "__main__":
    buffer_app()
