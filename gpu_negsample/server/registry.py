"""The samplers one job's server hosts, each with its own settings, table, seed and reload.

A job may need several samplers (with and without replacement, two tables, item and user
negatives). Local rank 0 *opens* them: its k-th sampler of given settings is hosted as
(settings, k). Every other rank *joins* the hosted sampler of the same (settings, k), so
rank r's k-th sampler of given settings meets rank 0's k-th one whatever else either has
made. A DataLoader worker *attaches* to a hosted sampler by its id (the sampler it was
pickled or forked from).

Settings are ``SamplerConfig.table_identity()``: what decides the table and how it is
sampled (not ``device`` or ``seed``, which are each rank's own).
"""
from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..config import SamplerConfig
from ..engine import Engine
from ..errors import RequestError


def settings_key(config: SamplerConfig) -> str:
    """The settings two ranks' samplers must agree on to share a hosted sampler, as one string."""
    return json.dumps(config.table_identity(), sort_keys=True)


@dataclass
class HostedSampler:
    """One sampler of the job: its engine (table, index, backend), who uses it, its reload."""

    ident: int
    config: SamplerConfig
    slot: int
    engine: Engine
    clients: set = field(default_factory=set)  # the server's client identities using it
    reloading: threading.Thread | None = None

    @property
    def seed(self) -> int:
        """The seed of ranks that gave none: the opener's, or one drawn for the sampler."""
        return self.engine.seed

    def describe_settings(self) -> str:
        return f"sampler #{self.ident} ({self.slot}-th of its settings) {self.config.table_identity()}"


class SamplerRegistry:
    """Hosted samplers by (settings, k) and by id; dropped when their last client leaves."""

    def __init__(self, make_engine: Callable[[SamplerConfig], Engine]):
        self._make_engine = make_engine
        self._ids = itertools.count()
        self._by_key: dict[tuple[str, int], HostedSampler] = {}
        self._by_id: dict[int, HostedSampler] = {}
        self._opened: list[dict] = []  # every sampler rank 0 opened, in its order: what a joiner is compared with

    def __iter__(self):
        return iter(list(self._by_id.values()))

    @property
    def reloading(self) -> bool:
        return any(h.reloading is not None for h in self._by_id.values())

    def open(self, config: SamplerConfig, slot: int) -> HostedSampler:
        """Local rank 0's k-th sampler of these settings: the hosted one, made if it is not there."""
        key = (settings_key(config), slot)
        hosted = self._by_key.get(key)
        if hosted is None:
            hosted = HostedSampler(next(self._ids), config, slot, self._make_engine(config))
            self._by_key[key], self._by_id[hosted.ident] = hosted, hosted
            self._opened.append(config.table_identity())
        return hosted

    def join(self, config: SamplerConfig, slot: int, ordinal: int) -> HostedSampler | None:
        """Another rank's k-th sampler of these settings (its `ordinal`-th of the job): the one
        rank 0 opened, or None while rank 0 may still make it. A RequestError naming both
        settings when rank 0 has no sampler of these settings and its sampler at the same place
        in its order has others (a rank given other arguments)."""
        hosted = self._by_key.get((settings_key(config), slot))
        if hosted is not None:
            return hosted
        asked = config.table_identity()
        if asked not in self._opened and ordinal < len(self._opened):
            raise RequestError(self.mismatch(config, slot, self._opened[ordinal]))
        if self._opened.count(asked) > slot:
            raise RequestError(f"local rank 0 already closed its sampler with this rank's settings "
                               f"({slot}-th of them); keep it open while other ranks use it")
        return None

    def mismatch(self, config: SamplerConfig, slot: int, theirs: dict | None) -> str:
        """What a rank whose sampler matches none of rank 0's is told: both sides' settings."""
        asked = config.table_identity()
        if theirs is not None:
            differ = {k: (theirs[k], asked[k]) for k in asked if theirs.get(k) != asked[k]}
            detail = ", ".join(f"{k}: rank 0 {a!r}, this rank {b!r}" for k, a, b in
                               ((k, *v) for k, v in differ.items()))
            return (f"this rank's sampler ({slot}-th of its settings) matches none of local rank 0's: rank 0's "
                    f"sampler at the same place has other settings ({detail}); give every rank the same "
                    "arguments, in the same order")
        hosted = "; ".join(h.describe_settings() for h in self) or "none"
        return (f"no sampler of local rank 0 has this rank's settings {asked} ({slot}-th of them); rank 0 hosts: "
                f"{hosted}. Give every rank the same arguments, in the same order")

    def attach(self, ident: int) -> HostedSampler:
        """The hosted sampler a DataLoader worker's copy of a sampler refers to."""
        hosted = self._by_id.get(ident)
        if hosted is None:
            raise RequestError(f"the job's server hosts no sampler #{ident} any more (its last user closed it); "
                               "keep the sampler open while DataLoader workers use it")
        return hosted

    def leave(self, hosted: HostedSampler, identity: bytes) -> None:
        """A client stops using `hosted`; the last one to leave drops it (and its table)."""
        hosted.clients.discard(identity)
        if not hosted.clients and hosted.reloading is None:
            self._drop(hosted)

    def drop_idle(self) -> None:
        """Drop the samplers whose last client left during their reload."""
        for hosted in self:
            if not hosted.clients and hosted.reloading is None:
                self._drop(hosted)

    def _drop(self, hosted: HostedSampler) -> None:
        self._by_id.pop(hosted.ident, None)
        if self._by_key.get((settings_key(hosted.config), hosted.slot)) is hosted:
            del self._by_key[(settings_key(hosted.config), hosted.slot)]
        hosted.engine.swap(None)
