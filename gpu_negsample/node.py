"""One table for a node, placed on every GPU that serves one of its ranks.

A node trains with one rank per GPU. Its table is read, checked and indexed once, into one
host arena (pinned where the devices read it in place); each device that serves a rank
gets its own copy of the index and of the feature columns that fit that device's budget,
placed from that one host copy, and the other columns are read from it in place. A rank's
requests run on its own device, on that device's own stream, and never cross to another
GPU. ``DeviceEngines`` keeps one ``Engine`` per device over the same loaded table; the
node's server routes each client to the engine of the client's device.
"""
from __future__ import annotations

import dataclasses
import secrets
import threading
from typing import Callable

from .config import SamplerConfig
from .engine import Engine, LoadedTable


class DeviceEngines:
    """An Engine per device, all over one loaded table (see the module docstring).

    ``make_backend(ordinal)`` builds the backend of one device (``select_backend(f"cuda:{n}")``
    on a node, ``"emulated:{n}"`` in tests). Devices are added on first use (``engine``), and
    a reload places the new table on every device in use before any of them switches to it,
    so every rank sees the new table from the same moment on. A device already in use is
    found without waiting for a reload's placement; a new one waits for it.
    """

    def __init__(self, config: SamplerConfig, make_backend: Callable[[int], object]):
        seed = secrets.randbits(64) if config.seed is None else config.seed
        self.config = dataclasses.replace(config, seed=seed)  # one seed for every device's engine
        self._make_backend = make_backend
        self._engines: dict[int, Engine] = {}
        self._lock = threading.Lock()  # devices added while a reload places the table

    @property
    def ordinals(self) -> list[int]:
        """The devices in use, in the order they were added."""
        return list(self._engines)

    def engine(self, ordinal: int) -> Engine:
        """The engine of device ``ordinal``, with the current table placed on it."""
        engine = self._engines.get(ordinal)  # devices are never removed: one in use needs no lock,
        if engine is not None:  # so the server's look-up at a hello never waits for a reload's placement
            return engine
        with self._lock:
            engine = self._engines.get(ordinal)
            if engine is None:
                engine = Engine(self.config, self._make_backend(ordinal))
                loaded = self._loaded()
                if loaded is not None:
                    engine.swap(self._place(loaded, engine))
                self._engines[ordinal] = engine
            return engine

    def ordinal_of(self, engine: Engine) -> int:
        """The device of one of these engines."""
        with self._lock:
            for ordinal, mine in self._engines.items():
                if mine is engine:
                    return ordinal
        raise ValueError("DeviceEngines.ordinal_of: not one of these engines")

    def reload(self, data, progress: bool | None = None) -> None:
        """Build the table once (on the first device's backend: its host arena is the node's one
        copy), place it on every device in use, then switch them all."""
        with self._lock:
            if not self._engines:
                raise RuntimeError("DeviceEngines.reload: no device in use yet; call engine(ordinal) first")
            first = next(iter(self._engines.values()))
        # Built outside the lock: a device added meanwhile (a rank's hello, answered by the
        # node server's loop thread) is not held up for the whole build.
        built = first.build_state(data, progress)
        with self._lock:  # every device in use now, those added during the build included
            engines = list(self._engines.values())
            states = [built if e is first else self._place(built, e) for e in engines]
            for engine, state in zip(engines, states):
                engine.swap(state)

    def release(self) -> None:
        """Drop the table from every device (the sampler's last user left)."""
        with self._lock:
            for engine in self._engines.values():
                engine.swap(None)

    def _loaded(self) -> LoadedTable | None:
        for engine in self._engines.values():
            if engine.loaded:
                return engine.state
        return None

    def _place(self, loaded: LoadedTable, engine: Engine) -> LoadedTable:
        """The loaded table's host arena and index, placed on another engine's device."""
        return LoadedTable(loaded.table, loaded.index, self.config.sample_tag, engine.backend)
