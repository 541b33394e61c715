"""A batch of stream entries: their events, and the entries that must not be written."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from labs_analytics.events import EventRecord
from labs_analytics.queue.consumer import PoisonEntry, StreamEntry
from labs_analytics.queue.entries import UndecodableEntry, decode_entry


@dataclass
class Batch:
    """Entries read together; their events, and the entries that must not be written."""

    entries: list[StreamEntry]
    records: list[EventRecord] = field(default_factory=list)
    poison: list[PoisonEntry] = field(default_factory=list)
    # id(record) → the stream entry it came from, to name it in a dead letter.
    entry_of: dict[int, str] = field(default_factory=dict)

    @property
    def stream_ids(self) -> list[str]:
        return [entry.entry_id for entry in self.entries]

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
            try:
                records = decode_entry(entry.fields)
            except UndecodableEntry as exc:
                # One unreadable entry must not block the others.
                batch.poison.append(
                    PoisonEntry(entry, f"undecodable entry: {exc}", fields_as_json(entry.fields))
                )
                continue
            batch.entries.append(entry)
            batch.records.extend(records)
            for record in records:
                batch.entry_of[id(record)] = entry.entry_id
        return batch


def fields_as_json(fields: dict[bytes, bytes]) -> str:
    """A stream entry's fields as JSON text: the dead letter's payload, replayable as is."""
    return orjson.dumps(
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    ).decode()
