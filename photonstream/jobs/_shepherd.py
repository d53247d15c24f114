"""The process that watches one local job: runs its command, enforces its time limit, records how it ended.

Started by the local backend as ``python -I -S _shepherd.py --log L --exit-file E --time-limit S --grace G -- CMD...``
in a new session, so the shepherd leads the job's process group and the command runs inside it. The exit record
(JSON, written atomically) is what lets a backend that did not start the job -- a new one after an API restart --
still learn its exit code. Standard library only: it is run by path, without importing photonstream.

Also the /proc helpers the local backend uses to recognise its processes (PID + start time, so that a reused PID
is not taken for a job's).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    state: str  # one letter: R, S, D, Z (zombie), ...
    pgid: int
    start_ticks: int  # clock ticks after boot: with the boot id, unique to one process


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_info(pid: int) -> ProcessInfo | None:
    """What /proc says about ``pid``; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after it follow the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(pid=pid, state=fields[0], pgid=int(fields[2]), start_ticks=int(fields[19]))


def is_same_live_process(pid: int, start_ticks: int) -> bool:
    """``pid`` still runs and is the process that started at ``start_ticks`` (zombies count as ended)."""
    info = process_info(pid)
    return info is not None and info.start_ticks == start_ticks and info.state not in ("Z", "X")


def group_members(pgid: int, started_at_or_after: int = 0) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` that started no earlier than the given tick."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = process_info(int(entry.name))
        if (
            info is not None
            and info.pgid == pgid
            and info.state not in ("Z", "X")
            and info.start_ticks >= started_at_or_after
        ):
            members.append(info.pid)
    return members


def write_exit_record(path: Path, exit_code: int | None, reason: str) -> None:
    record = {"exit_code": exit_code, "reason": reason, "finished_at": time.time()}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def _kill_rest_of_group(grace_s: float) -> None:
    """SIGTERM, then after ``grace_s`` SIGKILL, every other process of our group (left-behind background jobs)."""
    me, group = os.getpid(), os.getpgid(0)
    others = [pid for pid in group_members(group) if pid != me]
    if not others:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid != me for pid in group_members(group)):
        time.sleep(0.05)
    if any(pid != me for pid in group_members(group)):
        os.killpg(group, signal.SIGKILL)  # ends us too: the exit record is already written


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", required=True)
    parser.add_argument("--exit-file", required=True, type=Path)
    parser.add_argument("--time-limit", required=True, type=float)
    parser.add_argument("--grace", required=True, type=float)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.getpgid(0) != os.getpid():
        # the job's process group must be ours alone: the backend starts us in a new session, anyone else may not
        os.setsid()

    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        # a cancel signals the whole group; a signal for the shepherd alone is passed on to the command
        received.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    child: subprocess.Popen[bytes] | None = None
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    with open(args.log, "ab", buffering=0) as log:
        try:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except OSError as error:
            log.write(f"photonstream: cannot run {command[0]!r}: {error.strerror}\n".encode())
            code = 127 if isinstance(error, FileNotFoundError) else 126
            write_exit_record(args.exit_file, code, f"cannot run {command[0]!r}: {error.strerror}")
            return 0
        try:
            exit_code = child.wait(timeout=args.time_limit)
        except subprocess.TimeoutExpired:
            reason = f"time limit of {args.time_limit:g} s exceeded"
            log.write(f"\nphotonstream: {reason}; stopping the job\n".encode())
            write_exit_record(args.exit_file, None, reason)
            _kill_rest_of_group(args.grace)
            return 0

    reason = f"killed by signal {_signal_name(-exit_code)}" if exit_code < 0 else f"exit code {exit_code}"
    write_exit_record(args.exit_file, exit_code, reason)
    _kill_rest_of_group(args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
