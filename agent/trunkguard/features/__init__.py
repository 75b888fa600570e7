"""The capabilities, in the order their parts are built and their checks reported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from trunkguard.act.base import Actuator
from trunkguard.features import (
    calls,
    command,
    drills,
    kamailio,
    links,
    mqtt,
    netlink,
    notify,
    peers,
    remote,
    routes,
    sensors,
    site,
    templates,
    trunks,
)
from trunkguard.features.base import Feature

if TYPE_CHECKING:
    from trunkguard.config import Config

FEATURES: tuple[Feature, ...] = (
    trunks.FEATURE,
    calls.FEATURE,
    links.FEATURE,
    sensors.FEATURE,
    site.FEATURE,
    peers.FEATURE,
    routes.FEATURE,
    netlink.FEATURE,
    command.FEATURE,
    kamailio.FEATURE,
    templates.FEATURE,
    mqtt.FEATURE,
    remote.FEATURE,
    drills.FEATURE,
    notify.FEATURE,
)
ACTUATORS = (netlink.FEATURE, command.FEATURE, kamailio.FEATURE, templates.FEATURE)


def actuators(cfg: Config, env: Mapping[str, str]) -> list[Actuator]:
    """Every actuator the config asks for, as one generation would build them."""
    return [a for f in ACTUATORS for a in f.actuators(cfg, env)]
