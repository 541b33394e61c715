"""What a refused request is told: the first problems in detail, then the totals.

A hostile body can hold a hundred thousand problems (1,000 events, each with
a hundred unknown fields, fit in 6 KB of gzip). Listing them all made a 14 MB
answer and cost more CPU than any valid request, so an error lists at most
``MAX_LISTED_PROBLEMS`` problems and then one summary item::

    {"index": null, "field": null, "type": "too_many_problems",
     "message": "151000 problems in 1000 events; the first 20 are listed",
     "problems": 151000, "invalid_events": 1000, "invalid_indexes": [0, 1, …]}

``invalid_indexes`` names every invalid event (at most one small integer per
event of the request), so a client can still drop exactly those and resend
the rest in one round trip.

Finding the problems is bounded too. Pydantic builds an error object for
every unknown field, which made even counting them cost more than validating
a valid batch; so an event with more fields than the contract has is looked
for first (``few_fields``: one ``len`` per event). A list without one is
validated whole, as on the hot path; only a list that has one, or that
failed, is validated event by event, each event without its unknown fields
(counted here), with details built only until the list is full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from labs_analytics.events import EventIn

MAX_LISTED_PROBLEMS = 20
TOO_MANY_PROBLEMS = "too_many_problems"

_EVENT_ADAPTER: TypeAdapter[EventIn] = TypeAdapter(EventIn)
_EVENT_FIELDS = frozenset(EventIn.model_fields)
_MAX_FIELDS = len(_EVENT_FIELDS)
_EXTRA_MESSAGE = "Extra inputs are not permitted"


class Problems:
    """Problems of one request: counted in full, described up to the cap."""

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.count = 0
        self.invalid_indexes: list[int] = []

    @property
    def invalid_events(self) -> int:
        return len(self.invalid_indexes)

    @property
    def full(self) -> bool:
        return len(self.listed) >= MAX_LISTED_PROBLEMS

    def add(self, index: int | None, field: str | None, message: str, type_: str) -> None:
        self.count += 1
        if not self.full:
            self.listed.append({"index": index, "field": field, "message": message, "type": type_})

    def add_event(self, index: int, errors: ValidationError | None, extra: Sequence[str]) -> None:
        """One invalid event: Pydantic's errors (``loc`` relative to the event), unknown fields."""
        self.invalid_indexes.append(index)
        if errors is not None:
            if self.full:
                self.count += errors.error_count()  # cheap: no error objects are built
            else:
                for error in errors.errors(include_url=False, include_input=False):
                    self.add(index, _field(error["loc"]), error["msg"], error["type"])
        if self.full:
            self.count += len(extra)
        else:
            for name in extra:
                self.add(index, name, _EXTRA_MESSAGE, "extra_forbidden")

    def details(self) -> list[dict[str, Any]]:
        if self.count <= len(self.listed):
            return self.listed
        summary = {
            "index": None,
            "field": None,
            "type": TOO_MANY_PROBLEMS,
            "message": f"{self.count} problems in {self.invalid_events} events; "
            f"the first {len(self.listed)} are listed",
            "problems": self.count,
            "invalid_events": self.invalid_events,
            "invalid_indexes": self.invalid_indexes,
        }
        return [*self.listed, summary]

    def summary(self, events: int) -> str:
        """The message of a 422 for invalid events: how many, of how many."""
        text = f"{self.invalid_events} of {events} events are invalid"
        if self.count > len(self.listed):
            text += f" ({self.count} problems, the first {len(self.listed)} listed)"
        return text + "; nothing was accepted"


def _field(loc: Iterable[int | str]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def few_fields(items: Sequence[Any]) -> bool:
    """True when every event is an object with no more fields than the contract has.

    Such a list can hold at most a few problems per event, so validating it
    whole stays cheap even when it fails; a list with more fields in an event
    has unknown ones for sure, and goes straight to ``event_problems``.
    """
    for item in items:
        if type(item) is not dict or len(item) > _MAX_FIELDS:
            return False
    return True


def event_problems(items: Sequence[Any], context: dict[str, Any]) -> Problems:
    """Every problem of a list of events that failed validation, counted; the first described.

    Called only after the list as a whole failed: it validates again, event by
    event, so each error is attributed without building the full error list.
    """
    problems = Problems()
    for index, item in enumerate(items):
        extra: list[str] = []
        if isinstance(item, dict) and not item.keys() <= _EVENT_FIELDS:
            extra = [name for name in item if name not in _EVENT_FIELDS]
            item = {name: value for name, value in item.items() if name in _EVENT_FIELDS}
        try:
            _EVENT_ADAPTER.validate_python(item, context=context)
        except ValidationError as exc:
            problems.add_event(index, exc, extra)
        else:
            if extra:
                problems.add_event(index, None, extra)
    return problems
