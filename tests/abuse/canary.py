"""Canary files that report being opened: Linux inotify (IN_OPEN, IN_ACCESS) on each file, read through ctypes.

Opening a file (even read-only, even through a symlink) raises IN_OPEN on it; stat, lstat and realpath do not,
so checking a path without reading it counts zero. Directory listings are not watched: only the files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from pathlib import Path

IN_ACCESS = 0x001
IN_OPEN = 0x020
IN_NONBLOCK = 0o4000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class Canaries:
    """Files outside the data root whose contents must never show up, and whose opens are counted."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.libc = libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.secret = os.urandom(8).hex()
        self.paths: dict[int, Path] = {}
        self.opens: dict[Path, int] = {}
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"CANARY {self.secret} {name}\n")
            self.watch(path)

    def watch(self, path: Path) -> None:
        """Count the opens of one more file (made by the caller, e.g. a real HDF5 file)."""
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN | IN_ACCESS)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.paths[wd] = path
        self.opens[path] = 0

    def count(self) -> dict[Path, int]:
        """Opens and reads of each canary since it was made."""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = EVENT.unpack_from(data, offset)
                offset += EVENT.size + length
                if wd in self.paths:
                    self.opens[self.paths[wd]] += 1
        return dict(self.opens)

    def total(self) -> int:
        return sum(self.count().values())

    def leaked_into(self, text: str) -> bool:
        return self.secret in text

    def close(self) -> None:
        os.close(self.fd)
