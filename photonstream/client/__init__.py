"""Consumers of the buffer service: ``subscribe(endpoint, stream, ...)`` yields a stream's messages;
``subscribe_stream(create_response)`` does the same with the API's endpoint and credentials; ``publish`` and
``ResultPublisher`` send typed results back to the API."""

from photonstream.buffer.credentials import Credentials
from photonstream.client.results import ResultPublisher, publish
from photonstream.client.subscription import (
    AccessRefusedError,
    ConsumerError,
    Delivery,
    Subscription,
    SubscriptionStats,
    subscribe,
    subscribe_stream,
)

__all__ = [
    "AccessRefusedError",
    "ConsumerError",
    "Credentials",
    "Delivery",
    "ResultPublisher",
    "Subscription",
    "SubscriptionStats",
    "publish",
    "subscribe",
    "subscribe_stream",
]
