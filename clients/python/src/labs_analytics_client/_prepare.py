"""From ``track()``'s arguments to the event's JSON: scope, super_properties, before_send."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from labs_analytics_client._config import Config
from labs_analytics_client._events import (
    DropReason,
    EncodedEvent,
    EventRejected,
    encode_event,
    uuid7,
)
from labs_analytics_client._scope import apply_scope, current_scope

# Drop reasons of before_send (beside DropReason's): it returned None, or it raised.
BEFORE_SEND = "before_send"
BEFORE_SEND_ERROR = "before_send_error"


class Refused(Exception):
    """``track()`` drops the event: why, and whether the event itself was at fault."""

    def __init__(
        self, reason: str, name: object, event_id: str | None, message: str, *, invalid: bool
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.name = name
        self.event_id = event_id
        self.message = message
        self.invalid = invalid


def prepare(
    config: Config,
    name: object,
    user: object,
    properties: object,
    timestamp: object,
    event_id: object,
    context: object,
) -> EncodedEvent:
    """The event with the scope, super_properties and before_send applied; or ``Refused``."""
    lenient = not config.strict
    try:
        scoped = current_scope()
        if scoped is not None or config.super_properties:
            user, properties = apply_scope(scoped, config.super_properties, user, properties)
        if config.before_send is None:
            return _encoded(
                name,
                lenient,
                user=user,
                properties=properties,
                timestamp=timestamp,
                event_id=event_id,
                context=context,
                default_context=config.default_context,
            )
        default_context = config.default_context
        if default_context and (context is None or isinstance(context, Mapping)):
            context = {**default_context, **(context or {})}
        event: dict[str, Any] = {
            "name": name,
            "user": user,
            "timestamp": dt.datetime.now(dt.UTC) if timestamp is None else timestamp,
            "properties": dict(properties) if isinstance(properties, Mapping) else properties,
            "context": context,
            "event_id": str(uuid7()) if event_id is None else event_id,
        }
    except Refused:
        raise
    except EventRejected as exc:
        raise Refused(exc.reason, name, None, exc.message, invalid=True) from exc
    except Exception as exc:  # e.g. a Mapping whose items() raises: still never raise
        raise Refused(DropReason.NOT_SERIALIZABLE, name, None, repr(exc), invalid=True) from exc
    eid = str(event["event_id"])
    try:
        shaped = config.before_send(event)
        if shaped is not None and not isinstance(shaped, Mapping):
            raise TypeError(f"before_send must return a dict or None, not {shaped!r}")
    except Exception as exc:
        message = f"before_send raised {exc!r}"
        raise Refused(BEFORE_SEND_ERROR, name, eid, message, invalid=True) from exc
    if shaped is None:
        raise Refused(BEFORE_SEND, name, eid, "before_send returned None", invalid=False)
    return _encoded(
        shaped.get("name"),
        lenient,
        user=shaped.get("user"),
        properties=shaped.get("properties"),
        timestamp=shaped.get("timestamp"),
        event_id=shaped.get("event_id"),
        context=shaped.get("context"),
    )


def _encoded(name: object, lenient: bool, **fields: Any) -> EncodedEvent:
    try:
        return encode_event(name, lenient=lenient, **fields)
    except EventRejected as exc:
        raise Refused(exc.reason, name, None, exc.message, invalid=True) from exc
    except Exception as exc:
        raise Refused(DropReason.NOT_SERIALIZABLE, name, None, repr(exc), invalid=True) from exc
