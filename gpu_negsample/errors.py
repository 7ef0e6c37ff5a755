"""Exceptions raised for bad tables and bad requests."""


class NegSampleError(ValueError):
    """Base class: every error of this package says what was wrong, where, and how to fix it."""


class TableError(NegSampleError):
    """The negative table given to ``reload`` is invalid; the previous table stays loaded."""


class RequestError(NegSampleError):
    """A sampling / lookup request is invalid (counts, categories, ids, defaults)."""


class UnsatisfiableRowError(RequestError):
    """A positive cannot get the negatives it asked for (every candidate excluded, or too few)."""


class NotLoadedError(NegSampleError):
    """A request arrived before any table was loaded with ``reload``."""


class DeviceFaultError(NegSampleError):
    """The GPU context is unusable (an illegal address, an ECC error): the process must exit."""
