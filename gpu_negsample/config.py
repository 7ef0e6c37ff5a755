"""The settings of one sampler, stated once for every way of running it.

``SamplerConfig`` is what ``NegativeSampler`` (in-process) and ``LocalRpcDataSampler``
(through the node's server) are built from, and what the server rebuilds from the wire:
a new option is added here, once. Construction checks every value, so a config that
exists is valid wherever it came from (a user's call or a socket).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

UNSATISFIABLE_POLICIES = ("raise", "fill")

# RecIS's LocalDataSampler / LocalRpcDataSampler keyword arguments that configure its RPC
# layer or are marked "reserved" there. They are accepted so RecIS code runs unchanged,
# and ignored: the transport here is a local socket with no such knobs.
RECIS_IGNORED_OPTIONS = (
    "use_positive",
    "ignore_invalid_dedup_tag",
    "profiling",
    "rpc_server_name",
    "rpc_num_clients_per_worker",
    "rpc_client_idx_in_worker",
    "rpc_master_port",
    "rpc_server_num_threads",
    "rpc_server_timeout",
    "rpc_server_inter_op_threads",
    "rpc_server_profiling",
)

# The most negatives one request may ask for (the sum of its sample counts); bigger
# requests are refused before anything is allocated. 2**28 negatives are 2 GiB of ids.
DEFAULT_MAX_NEGATIVES = 1 << 28
_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Every setting of a sampler (see ``NegativeSampler`` for their meaning)."""

    sample_tag: str
    dedup_tag: str
    weight_tag: str
    skey_name: str | None = None
    put_back: bool = True
    seed: int | None = None
    weight_exponent: float = 1.0
    unsatisfiable: str = "raise"
    fill_id: int = -1
    device: str = "auto"
    memory_budget: int | None = None
    max_negatives: int = DEFAULT_MAX_NEGATIVES

    def __post_init__(self) -> None:
        for name in ("seed", "fill_id", "memory_budget", "max_negatives"):
            value = getattr(self, name)
            if _is_integer(value):  # numpy integers become plain ints, so the config is JSON
                object.__setattr__(self, name, int(value))
        for name in ("sample_tag", "dedup_tag", "weight_tag"):
            _check_name(name, getattr(self, name), optional=False)
        _check_name("skey_name", self.skey_name, optional=True)
        _check_type("put_back", self.put_back, bool)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, (1 << 64) - 1, "a 64-bit unsigned integer, or None for a random seed")
        if isinstance(self.weight_exponent, bool) or not isinstance(self.weight_exponent, (int, float)) \
                or not math.isfinite(self.weight_exponent) or self.weight_exponent <= 0:
            raise ValueError(f"weight_exponent must be a positive finite number; got {self.weight_exponent!r}")
        if self.unsatisfiable not in UNSATISFIABLE_POLICIES:
            raise ValueError(f"unsatisfiable must be one of {UNSATISFIABLE_POLICIES}; got {self.unsatisfiable!r}")
        _check_int("fill_id", self.fill_id, *_INT64, "an int64 id")
        _check_type("device", self.device, str)
        if self.memory_budget is not None:
            _check_int("memory_budget", self.memory_budget, 0, None, "a byte count >= 0, or None")
        _check_int("max_negatives", self.max_negatives, 1, 1 << 40, "a positive count of negatives per request")

    @classmethod
    def from_arguments(cls, *, recis_options: Mapping[str, Any], owner: str, **settings) -> "SamplerConfig":
        """The config of a sampler's constructor arguments. ``recis_options`` are the extra
        keyword arguments: RecIS's own names are ignored, any other is a TypeError."""
        unknown = [k for k in recis_options if k not in RECIS_IGNORED_OPTIONS]
        if unknown:
            known = [f.name for f in dataclasses.fields(cls)] + list(RECIS_IGNORED_OPTIONS)
            hints = [f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "" for k in unknown]
            raise TypeError(f"{owner}() got unexpected keyword argument(s) "
                            + ", ".join(f"{k!r}{h}" for k, h in zip(unknown, hints))
                            + f"; RecIS's own options {list(RECIS_IGNORED_OPTIONS)} are accepted and ignored")
        if settings.get("seed") is not None:
            _check_int("seed", settings["seed"], None, None, "an integer")
            settings["seed"] = int(settings["seed"]) % (1 << 64)  # negative seeds wrap, as numpy's do not
        if isinstance(settings.get("weight_exponent"), int) and not isinstance(settings["weight_exponent"], bool):
            settings["weight_exponent"] = float(settings["weight_exponent"])
        return cls(**settings)

    def to_wire(self) -> dict:
        """A JSON-ready dict (the server's command line and hello)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> "SamplerConfig":
        """A config from an untrusted dict: unknown or missing keys and wrong types are ValueErrors."""
        if not isinstance(data, dict):
            raise ValueError(f"a sampler config must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown sampler settings {unknown}")
        try:
            return cls(**data)
        except TypeError as e:  # a required setting is missing
            raise ValueError(str(e)) from None

    def table_identity(self) -> dict:
        """The settings that decide what a loaded table is and how it is sampled: ranks whose
        samplers agree on these share one sampler on the node's server (``device`` is each
        rank's own, and ``seed`` is made per rank)."""
        return {k: v for k, v in self.to_wire().items() if k not in ("device", "seed")}


def _check_type(name: str, value, kind) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}; got {value!r} ({type(value).__name__})")


def _check_name(name: str, value, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a column name (a non-empty str){' or None' if optional else ''}; got {value!r}")


def _is_integer(value) -> bool:
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value, low, high, what: str) -> None:
    if not _is_integer(value):
        raise ValueError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {what}; got {value}")
