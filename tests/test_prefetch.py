"""The prefetch wrapper: order, bounded look-ahead, exceptions in the loop, clean shutdown."""
import contextlib
import gc
import threading
import time
import weakref

import pytest
import torch

from gpu_negsample import prefetch
from tests.devices import needs_gpu


def test_yields_transformed_items_in_order_and_stays_bounded():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(source(), lambda x: x * 10, depth=2)
    first = next(it)
    time.sleep(0.2)
    assert first == 0 and len(produced) <= 1 + 2 + 1  # the one taken, the queue, the one in hand
    assert [first, *it] == [10 * i for i in range(20)]


def test_an_exception_reaches_the_loop_at_its_item():
    def transform(x):
        if x == 3:
            raise ValueError("bad batch 3")
        return x

    seen = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for x in prefetch(range(10), transform):
            seen.append(x)
    assert seen == [0, 1, 2]


def test_close_stops_the_thread_mid_stream():
    before = threading.active_count()
    with prefetch(iter(range(10**9)), lambda x: x, depth=4) as it:
        assert next(it) == 0
    time.sleep(0.2)
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(it)


def test_a_loop_left_with_break_stops_the_thread_when_the_prefetcher_is_collected():
    """No close(), no with: the thread must not keep the Prefetcher (nor what the transform
    holds) alive; once the loop's iterator is collected, the thread ends."""
    class Sampler:  # stands for a sampler the transform is a method of
        def transform(self, x):
            return x

    sampler = Sampler()
    sampler_alive = weakref.ref(sampler)
    threads_before = set(threading.enumerate())
    for x in prefetch(iter(range(10**9)), sampler.transform, depth=2):
        if x == 3:
            break
    del sampler, x
    gc.collect()
    started = [t for t in threading.enumerate() if t not in threads_before]
    for t in started:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in started), "the prefetch thread outlived its Prefetcher"
    assert sampler_alive() is None, "the stopped thread still holds the transform's object"


def test_the_transform_runs_on_the_callers_cuda_stream_and_device(monkeypatch):
    """CUDA's current device and torch's current stream are per thread: a prefetch thread
    would start on device 0's default stream, so a rank on GPU 3 would put the transform's
    ``.cuda()`` tensors on GPU 0, and results handed over to that default stream would be
    freed under a training loop on a stream of its own. torch's per-thread state is faked
    here (no GPU in CI): current_stream() answers the thread's own, stream() sets it."""
    here = threading.local()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: getattr(here, "stream", "cuda:0 default"))

    @contextlib.contextmanager
    def stream(s):
        before, here.stream = getattr(here, "stream", "cuda:0 default"), s
        try:
            yield
        finally:
            here.stream = before

    monkeypatch.setattr(torch.cuda, "stream", stream)
    with torch.cuda.stream("the training loop's stream on cuda:3"):
        seen = list(prefetch(range(3), lambda x: torch.cuda.current_stream()))
    assert seen == ["the training loop's stream on cuda:3"] * 3


@needs_gpu
@pytest.mark.gpu
def test_on_a_gpu_the_transform_runs_on_the_callers_stream():
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        seen = list(prefetch(range(3), lambda x: (torch.cuda.current_stream(), torch.cuda.current_device())))
    assert seen == [(side, side.device.index)] * 3


def test_close_starts_no_further_transform_and_keeps_nothing_computed_ahead():
    """close() while the thread waits to hand over a result: the room the drain makes must
    not let it hand that result over (held until the Prefetcher goes: a batch of GPU memory)
    and go on to transform (sample) one more batch."""
    class Result:
        pass

    started, results = [], []

    def transform(x):
        started.append(x)
        results.append(weakref.ref(r := Result()))
        return r

    it = prefetch(iter(range(100)), transform, depth=1)
    taken = next(it)
    time.sleep(0.3)  # the thread fills the queue and waits with the next result in hand
    before = len(started)
    it.close()
    assert len(started) == before, "close() let the thread start another transform"
    gc.collect()
    assert [r() for r in results] == [taken] + [None] * (len(results) - 1), "close() kept a result computed ahead"
