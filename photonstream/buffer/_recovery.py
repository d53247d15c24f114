"""Recovery at start: the durable streams of the data directory, with their groups, producer and end."""

from __future__ import annotations

import contextlib
import json
import shutil

from photonstream.buffer._state import (
    ENDED_FILE,
    MULTI_PRODUCER_FILE,
    SPILL_DIR,
    Producer,
    ServiceError,
    ServiceState,
    Stream,
    _joined,
)
from photonstream.buffer.groups import Group
from photonstream.buffer.log import GROUPS_FILE, META_FILE, StreamLog


class Recovery(ServiceState):
    """Reopening what a previous run of the buffer left in its data directory."""

    def _recover(self) -> None:
        root = self.settings.data_dir
        if root is None:
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / SPILL_DIR, ignore_errors=True)  # spilled data of non-durable streams is gone
            metas = sorted(root.glob(f"*/*/*/{META_FILE}"))
        except OSError as exc:
            raise ServiceError(f"buffer: cannot use data directory {root} ({exc.strerror})") from None
        for meta in metas:
            log = StreamLog.recover(meta.parent, self.settings.segment_bytes)
            stream = Stream(log)
            groups_file = meta.parent / GROUPS_FILE
            if groups_file.exists():
                for state in json.loads(groups_file.read_text()).get("groups", []):
                    group = Group.from_state(log, state)
                    stream.groups[group.name] = group
            if log.start is not None:
                stream.start_bytes = _joined(log.start.frames or [])
            if (meta.parent / MULTI_PRODUCER_FILE).exists():
                # records carry the buffer's arrival numbers, not each producer's sequence: a resend could not
                # be told from new data, so refuse rather than duplicate or lose
                stream.refuse_producers = (
                    f"{log.address}: the buffer restarted while several producers wrote this durable stream; "
                    "it cannot take more data (start a new run)"
                )
            elif log.producer:
                last = log.last_transport_seq
                stream.producers[log.producer] = Producer(log.producer, None, last, acked_n=last)
            ended = meta.parent / ENDED_FILE
            if log.end is None and ended.exists():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    why = json.loads(ended.read_text())
                    self._mark_ended(stream, str(why["reason"]), str(why["message"]))
            self.streams[log.address] = stream
