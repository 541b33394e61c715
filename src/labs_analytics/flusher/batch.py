"""A batch of stream entries: their events, and the entries that must not be written.

Its events are read one of two ways. Usually as COPY text
(``storage.copy_text``): cheap, and PostgreSQL checks ids and times as it
parses them. Otherwise the exact way, into records (``decode_entry``): when an
entry is not in the form this service writes, or PostgreSQL refused the text.
Read the exact way, an entry that cannot be decoded is set aside as poison,
and each record knows its entry, to name it in a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from labs_analytics.events import EventRecord
from labs_analytics.queue.consumer import PoisonEntry, StreamEntry
from labs_analytics.queue.entries import UndecodableEntry, decode_entry
from labs_analytics.storage.copy_text import CopyText, NotCanonical, copy_text


@dataclass
class Batch:
    """Entries read together; their events, and the entries that must not be written."""

    entries: list[StreamEntry]
    # The events as COPY text; None once they are read the exact way.
    text: CopyText | None = None
    records: list[EventRecord] = field(default_factory=list)
    poison: list[PoisonEntry] = field(default_factory=list)
    # id(record) → the stream entry it came from, to name it in a dead letter.
    entry_of: dict[int, str] = field(default_factory=dict)

    @property
    def stream_ids(self) -> list[str]:
        return [entry.entry_id for entry in self.entries]

    @property
    def events(self) -> int:
        return len(self.text if self.text is not None else self.records)

    @classmethod
    def from_entries(cls, entries: list[StreamEntry], *, max_deliveries: int) -> Batch:
        batch = cls(entries=[])
        for entry in entries:
            if entry.deliveries > max_deliveries:
                # Delivered again and again without an ack: it may be what
                # kills flushers. Set it aside rather than try once more.
                batch.poison.append(
                    PoisonEntry(
                        entry,
                        f"delivered {entry.deliveries} times without "
                        f"success (limit {max_deliveries})",
                        fields_as_json(entry.fields),
                    )
                )
                continue
            batch.entries.append(entry)
        try:
            batch.text = copy_text(entry.fields for entry in batch.entries)
        except NotCanonical:
            batch.poison += batch.read_exactly()
        return batch

    def read_exactly(self) -> list[PoisonEntry]:
        """Decode the entries into records; the undecodable ones leave the batch,
        returned as poison for the caller to set aside."""
        self.text = None
        self.records, self.entry_of = [], {}
        poison: list[PoisonEntry] = []
        decoded: list[StreamEntry] = []
        for entry in self.entries:
            try:
                records = decode_entry(entry.fields)
            except UndecodableEntry as exc:
                # One unreadable entry must not block the others.
                poison.append(
                    PoisonEntry(entry, f"undecodable entry: {exc}", fields_as_json(entry.fields))
                )
                continue
            decoded.append(entry)
            self.records.extend(records)
            for record in records:
                self.entry_of[id(record)] = entry.entry_id
        self.entries = decoded
        return poison


def fields_as_json(fields: dict[bytes, bytes]) -> str:
    """A stream entry's fields as JSON text: the dead letter's payload, replayable as is."""
    return orjson.dumps(
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    ).decode()
