"""Consumers of the buffer service: ``subscribe(endpoint, stream, ...)`` yields a stream's messages."""

from photonstream.client.subscription import ConsumerError, Delivery, Subscription, SubscriptionStats, subscribe

__all__ = ["ConsumerError", "Delivery", "Subscription", "SubscriptionStats", "subscribe"]
