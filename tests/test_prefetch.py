"""The prefetch wrapper: order, bounded look-ahead, exceptions in the loop, clean shutdown."""
import gc
import threading
import time
import weakref

import pytest

from gpu_negsample import prefetch


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
