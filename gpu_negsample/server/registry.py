"""The samplers one job's server hosts, each with its own settings, table, seed and reload.

A job may need several samplers (with and without replacement, two tables, item and user
negatives). Local rank 0 *opens* them: its k-th sampler of given settings is hosted as
(settings, k). Every other rank *joins* the hosted sampler of the same (settings, k), so
rank r's k-th sampler of given settings meets rank 0's k-th one whatever else either has
made. A DataLoader worker *attaches* to a hosted sampler by its id (the sampler it was
pickled or forked from).

Settings are ``SamplerConfig.table_identity()``: what decides the table and how it is
sampled (not ``device`` or ``seed``, which are each rank's own).

A sampler on a GPU (or an emulated one) holds a ``DeviceEngines``: one table for the node,
an Engine per GPU that serves a rank, so each rank's requests run on its own GPU. A CPU
sampler holds one Engine for every rank.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..backends.select import _auto_choice, _ordinal, select_backend
from ..config import SamplerConfig
from ..engine import Engine
from ..errors import RequestError
from ..node import DeviceEngines
from .rank_device import server_ordinal

CPU_LANE = "cpu"  # the one lane (worker threads, service.Lane) of every CPU sampler


def settings_key(config: SamplerConfig) -> str:
    """The settings two ranks' samplers must agree on to share a hosted sampler, as one string."""
    return json.dumps(config.table_identity(), sort_keys=True)


class OneEngine:
    """A CPU sampler's one engine, shared by every rank (DeviceEngines' methods, one device).
    ``engine``: the one to hold (tests pass a fake); default a CPU Engine for ``config``."""

    def __init__(self, config: SamplerConfig, engine: Engine | None = None):
        self._engine = engine if engine is not None else Engine(config, select_backend("cpu"))
        self.config = dataclasses.replace(config, seed=self._engine.seed)

    def engine_for(self, device) -> Engine:
        return self._engine

    @staticmethod
    def lane(engine: Engine) -> str:
        """The server's lane for this engine's requests: one for every CPU sampler, whose
        workers share the machine's cores between the requests running at once."""
        return CPU_LANE

    def reload(self, data, progress: bool | None = None) -> None:
        self._engine.reload(data, progress)

    def release(self) -> None:
        self._engine.swap(None)


class GpuEngines(DeviceEngines):
    """A GPU (or emulated) sampler's engines: one per GPU that serves a rank."""

    def __init__(self, config: SamplerConfig, kind: str, default_ordinal: int):
        super().__init__(config, lambda n: select_backend(f"{kind}:{n}", config.memory_budget))
        self.kind, self.default_ordinal = kind, default_ordinal

    def engine_for(self, device) -> Engine:
        """The engine of the GPU a rank's hello names (``device``: wire data, checked); a rank
        that names none gets the sampler's own device. A RequestError when the server
        cannot use that GPU."""
        ordinal = server_ordinal(self.kind, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        ordinal = self.default_ordinal if ordinal is None else ordinal
        try:
            return self.engine(ordinal)
        except ValueError as e:
            raise RequestError(f"this rank samples on {self.kind}:{ordinal} (the server's numbering), which the "
                               f"node's sampling server cannot use: {e}") from None


    def lane(self, engine: Engine) -> str:
        """The server's worker thread for this engine's requests: one per device ("cuda:1"),
        so ranks on different GPUs are answered at the same time."""
        return f"{self.kind}:{self.ordinal_of(engine)}"


def make_engines(config: SamplerConfig) -> GpuEngines | OneEngine:
    """The engines of a hosted sampler: an Engine per GPU of the node for a GPU (or emulated)
    device, made as ranks ask for their GPU; one Engine for a CPU one."""
    device = _auto_choice() if config.device == "auto" else config.device
    if device == "cpu":
        return OneEngine(config)
    kind = device.partition(":")[0]
    try:
        if kind not in ("cuda", "emulated"):
            select_backend(device)  # raises: says which devices there are
        return GpuEngines(config, kind, _ordinal(device))
    except ValueError as e:  # the setting came from a rank's hello: its error, not the server's
        raise RequestError(str(e)) from None


@dataclass
class HostedSampler:
    """One sampler of the job: its engines (table, index, a backend per device), who uses it,
    its reload."""

    ident: int
    config: SamplerConfig
    slot: int
    engines: GpuEngines | OneEngine
    clients: set = field(default_factory=set)  # the server's client identities using it
    reloading: threading.Thread | None = None
    queued_reloads: list = field(default_factory=list)  # (client, source, seq) waiting for the running reload
    reload_lock: threading.Lock = field(default_factory=threading.Lock)  # the queue and `reloading`, both threads

    @property
    def key(self) -> tuple[str, int]:
        """Where the registry finds it: (settings, k)."""
        return settings_key(self.config), self.slot

    def unused(self) -> bool:
        """No client and no reload running or queued (read under the reload thread's lock)."""
        with self.reload_lock:
            return not self.clients and self.reloading is None

    @property
    def seed(self) -> int:
        """The seed of ranks that gave none: the opener's, or one drawn for the sampler."""
        return self.engines.config.seed

    def describe_settings(self) -> str:
        return f"sampler #{self.ident} ({self.slot}-th of its settings) {self.config.table_identity()}"


class SamplerRegistry:
    """Hosted samplers by (settings, k) and by id; dropped when their last client leaves."""

    def __init__(self, make_engines: Callable[[SamplerConfig], GpuEngines | OneEngine] = make_engines):
        self._make_engines = make_engines
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
            hosted = HostedSampler(next(self._ids), config, slot, self._make_engines(config))
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
        if hosted.unused():
            self._drop(hosted)

    def drop_idle(self) -> None:
        """Drop the samplers whose last client left during their reload."""
        for hosted in self:
            if hosted.unused():
                self._drop(hosted)

    def _drop(self, hosted: HostedSampler) -> None:
        self._by_id.pop(hosted.ident, None)
        if self._by_key.get(hosted.key) is hosted:
            del self._by_key[hosted.key]
        hosted.engines.release()
