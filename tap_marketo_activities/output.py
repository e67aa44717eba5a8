"""Singer messages out: one writer for the whole tap, records gathered into large writes.

A signal that comes while a message is being written waits for the end of it: a message
cut in the middle would be one unreadable line for the target.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.contrib.msgspec import encoder as sdk_encoder
from singer_sdk.singerlib import Message, RecordMessage
from typing_extensions import override

FLUSH_BYTES = 1 << 16


class OutputClosed(Exception):
    """stdout took no more (the target exited: broken pipe): nothing more can be delivered."""

    @override
    def __str__(self) -> str:
        return (f"Writing to stdout failed ({super().__str__()}): the target stopped reading. "
                "The last state it received covers everything it got; fix the target and "
                "run again.")


class Terminated(BaseException):
    """SIGINT or SIGTERM: unwinds through every `except Exception`, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class RecordBufferingWriter(MsgSpecWriter):
    """msgspec serialisation, with RECORD messages gathered into large writes: a write per
    record is a system call per record when stdout is unbuffered (PYTHONUNBUFFERED=1, set
    in many containers). Every other message (SCHEMA, STATE, BATCH) is written out at once
    with what came before it, so a state never reaches the target before its records."""

    writing = False
    deferred_signal: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = bytearray()  # the serialiser reuses its own buffer: copy out of it

    @override
    def write_message(self, message: Message) -> None:
        self.writing = True
        try:
            self._pending += self.format_message(message)
            if not isinstance(message, RecordMessage) or len(self._pending) >= FLUSH_BYTES:
                self.flush()
        finally:
            self.writing = False
        self._raise_deferred_signal()

    def write_record(self, framing: RecordFraming, record: dict[str, Any]) -> None:
        """A RECORD message, as `write_message` would write it, without building one."""
        self.writing = True
        try:
            pending = self._pending
            pending += framing.head
            sdk_encoder.encode_into(record, pending, -1)
            pending += framing.tail
            if len(pending) >= FLUSH_BYTES:
                self.flush()
        finally:
            self.writing = False
        self._raise_deferred_signal()

    def _raise_deferred_signal(self) -> None:
        signum, self.deferred_signal = self.deferred_signal, None  # raised once
        if signum is not None:
            raise Terminated(signum)

    def flush(self) -> None:
        data = memoryview(bytes(self._pending))
        self._pending.clear()
        try:
            out = sys.stdout.buffer
            while data:  # a raw (unbuffered) stdout may take part of a write
                written = out.write(data)
                data = data[written if written is not None else len(data):]
            sys.stdout.flush()
        except OSError as exc:
            raise OutputClosed(exc.strerror or str(exc)) from exc


class RecordFraming:
    """The bytes around a stream's records: what `RecordMessage.to_dict` gives, encoded."""

    def __init__(self, stream: str, time_extracted: dt.datetime) -> None:
        self.head = b'{"type":"RECORD","stream":' + sdk_encoder.encode(stream) + b',"record":'
        stamp = time_extracted.astimezone(dt.timezone.utc)
        self.tail = b',"time_extracted":' + sdk_encoder.encode(stamp) + b"}\n"
