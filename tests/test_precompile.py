"""python -m gpu_negsample.precompile: every entry point of the sampling API is run, in
processes of its own, so the compile cache it fills serves every later process."""
from gpu_negsample import NegativeSampler, precompile

PUBLIC_CALLS = {"sample_ids", "valid_sample_ids", "combine_vector_with_sample_counts", "pack_feature", "combine",
                "sample"}


def test_the_entry_points_call_every_sampling_method_of_the_api(monkeypatch):
    called = set()

    class Recording(NegativeSampler):
        pass

    for name in PUBLIC_CALLS:
        def record(self, *args, _name=name, **kwargs):
            called.add((_name, self.engine.config.put_back, kwargs.get("avoid_conflict_with_all_dedup_tags", False)))
            return getattr(NegativeSampler, _name)(self, *args, **kwargs)
        setattr(Recording, name, record)
    monkeypatch.setattr(precompile, "NegativeSampler", Recording)
    for name in precompile._entry_points():
        assert precompile.compile_entry_point(name) >= 0
    assert {name for name, _, _ in called} == PUBLIC_CALLS
    # sample_ids in each of its kernel families: with and without put back, row-wise and batch-wide
    assert {(p, b) for name, p, b in called if name == "sample_ids"} == {(True, False), (False, False), (True, True),
                                                                         (False, True)}


def test_precompile_runs_each_entry_point_in_a_pool_and_reports_it():
    lines = []
    seconds = precompile.precompile(jobs=2, report=lines.append)
    assert lines[0].startswith("load kernels: ")
    assert [line.rsplit(":", 1)[0] for line in lines[1:]] == list(precompile._entry_points())
    assert seconds > 0
