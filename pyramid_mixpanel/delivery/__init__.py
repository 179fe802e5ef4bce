"""Delivery of released messages, one lane (destination) at a time.

``mixpanel.delivery`` picks how: ``background`` (default, :class:`~.engine.BackgroundEngine`),
``sync`` (:class:`~.sync.SyncDelivery`), ``celery`` (:class:`~.celery.CeleryDelivery`) or the
dotted name of a factory of your own (see :class:`~.base.Delivery`). Whatever the mode, batches
reach Mixpanel through :class:`~.transport.MixpanelTransport` and Customer.io through
:class:`~pyramid_mixpanel.customerio.CustomerIOTransport`.
"""

from __future__ import annotations

import typing as t

from ..exceptions import MixpanelConfigurationError
from .base import Delivery, DeliveryFactory, Message, Outcome, Transport, batches
from .engine import BackgroundEngine
from .policy import RetryPolicy, is_retryable
from .sync import ConsumerDelivery, SyncDelivery
from .transport import MixpanelTransport

if t.TYPE_CHECKING:
    from ..log import Log
    from ..settings import MixpanelSettings

__all__ = [
    "BackgroundEngine",
    "ConsumerDelivery",
    "Delivery",
    "DeliveryFactory",
    "Message",
    "MixpanelTransport",
    "Outcome",
    "RetryPolicy",
    "SyncDelivery",
    "Transport",
    "batches",
    "build_delivery",
    "is_retryable",
]


def factory_for(settings: MixpanelSettings) -> DeliveryFactory:
    """The factory of the configured delivery mode."""
    if settings.delivery_factory is not None:
        return t.cast(DeliveryFactory, settings.delivery_factory)
    if settings.delivery == "background":
        return BackgroundEngine.from_settings
    if settings.delivery == "celery":
        # Imported here: the Celery hand-over pulls in Customer.io's transport for workers.
        from .celery import CeleryDelivery

        return CeleryDelivery
    return SyncDelivery


def build_delivery(transport: Transport, settings: MixpanelSettings, log: Log) -> Delivery:
    """Build the configured delivery of ``transport``'s lane; check what a custom factory gave."""
    delivery = factory_for(settings)(transport, settings, log)
    if not isinstance(delivery, Delivery):
        raise MixpanelConfigurationError(
            f"mixpanel.delivery = {settings.delivery} returned {type(delivery).__qualname__},"
            " not a pyramid_mixpanel.delivery.Delivery"
        )
    return delivery
