"""Prefetch: negative sampling of the next batches runs in a background thread while the
model trains on the current one (RecIS's ``prefetch_transform=True``)."""
from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator

import torch

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Iterator):
    """Iterate ``transform(item)`` for the items of ``iterable``, computed ``depth`` items ahead
    in a background thread.

    An exception in the iterable or the transform is raised in the consuming loop, at the
    item where it happened; ``close()`` (or leaving a ``with`` block, or the end of the
    data) stops the thread. The thread holds no reference to the Prefetcher (as torch's
    pin-memory thread), so a loop left with ``break`` and no ``close()`` stops it too, when
    the Prefetcher is collected, and releases what it computed ahead. The samplers release
    the GIL in their kernels and answer one request at a time, so a prefetch thread and the
    training thread can share one.

    The transform runs on the CUDA device and stream current where the Prefetcher is made
    (CUDA's current device and torch's current stream are per thread; a new thread starts
    on device 0's default stream): its ``.cuda()`` tensors land on the rank's GPU, and the
    samplers hand their results over to the stream the training loop uses.
    """

    def __init__(self, iterable: Iterable, transform: Callable[[Any], Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        stream = torch.cuda.current_stream() if torch.cuda.is_initialized() else None
        self._thread = threading.Thread(target=_produce, name="gpu_negsample-prefetch", daemon=True,
                                        args=(iter(iterable), transform, self._queue, self._stop, stream))
        self._thread.start()
        # Runs at close() or when the Prefetcher is collected; it holds only the queue and the event.
        self._stop_thread = weakref.finalize(self, _stop, self._queue, self._stop)

    def __next__(self):
        if self._finished:
            raise StopIteration
        while True:
            try:
                value = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise StopIteration from None
        if value is _DONE:
            self.close()
            raise StopIteration
        if isinstance(value, _Failure):
            self.close()
            raise value.error
        return value

    def close(self) -> None:
        """Stop the background thread and drop what it computed ahead. Idempotent."""
        self._finished = True
        self._stop_thread()
        self._thread.join(timeout=30)
        _drain(self._queue)  # a result the thread handed over into the room the first drain made

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _produce(items: Iterator, transform: Callable, out: queue.Queue, stop: threading.Event, stream) -> None:
    """The background thread: transformed items, then _DONE or the _Failure, into ``out``,
    on the caller's CUDA ``stream`` (and its device) when the caller had one."""
    try:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            while not stop.is_set():  # checked before each item: none is taken or transformed after close()
                item = next(items, _DONE)
                if item is _DONE:
                    break
                if not _put(out, stop, transform(item)):
                    return
            else:
                return
    except BaseException as e:  # handed to the consumer, raised there
        _put(out, stop, _Failure(e))
        return
    _put(out, stop, _DONE)


def _put(out: queue.Queue, stop: threading.Event, value) -> bool:
    """Hand a value over unless stopped (checked while waiting for room in the queue)."""
    while not stop.is_set():
        try:
            out.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _stop(out: queue.Queue, stop: threading.Event) -> None:
    """Tell the thread to stop and drop what it computed ahead."""
    stop.set()
    _drain(out)


def _drain(out: queue.Queue) -> None:
    """Drop every value waiting in the queue."""
    while True:
        try:
            out.get_nowait()
        except queue.Empty:
            break


def prefetch(iterable: Iterable, transform: Callable[[Any], Any], depth: int = 2) -> Prefetcher:
    """``Prefetcher(iterable, transform, depth)``: e.g. ``for batch in prefetch(dataset, neg_sampling_fn)``."""
    return Prefetcher(iterable, transform, depth)
