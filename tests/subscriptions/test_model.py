"""The API's list of event types is the feed's."""

from __future__ import annotations

import typing

from app.api.shapes import SubscribedType
from app.subscriptions.model import EVENT_TYPES


def test_the_api_names_every_feed_event_type() -> None:
    assert typing.get_args(SubscribedType) == EVENT_TYPES
