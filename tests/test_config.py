"""Sampler settings: RecIS's argument names accepted, anything else refused by name, and a
config from the wire checked as strictly as one from a call."""
import pytest

from gpu_negsample import LocalRpcDataSampler, NegativeSampler, SamplerConfig
from gpu_negsample.config import RECIS_IGNORED_OPTIONS


def test_a_misspelt_argument_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"'put_bak' \(did you mean 'put_back'\?\)"):
        NegativeSampler("cat", "item", "w", put_bak=False)
    with pytest.raises(TypeError, match="'rpc_port'"):
        LocalRpcDataSampler("cat", "item", "w", rpc_port=1)  # refused before any server starts


def test_recis_options_are_accepted_and_ignored():
    s = NegativeSampler("cat", "item", "w", "skey", False, device="cpu",
                        **{name: 1 for name in RECIS_IGNORED_OPTIONS})
    assert s.put_back is False


@pytest.mark.parametrize("bad", [
    {"weight_exponent": 0.0}, {"weight_exponent": float("nan")}, {"unsatisfiable": "skip"},
    {"fill_id": 2**70}, {"skey_name": ""}, {"memory_budget": -1}, {"max_negatives": 0}, {"put_back": "no"},
])
def test_bad_values_are_refused_with_the_setting_named(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        SamplerConfig("cat", "item", "w", **bad)


def test_wire_configs_are_checked_strictly():
    good = SamplerConfig("cat", "item", "w", seed=5).to_wire()
    assert SamplerConfig.from_wire(good) == SamplerConfig("cat", "item", "w", seed=5)
    for bad in (dict(good, extra=1), {k: v for k, v in good.items() if k != "dedup_tag"},
                dict(good, seed="5"), dict(good, put_back=1), dict(good, seed=-1), [good]):
        with pytest.raises(ValueError):
            SamplerConfig.from_wire(bad)


def test_negative_and_numpy_seeds_are_normalised_to_64_bits():
    import numpy as np

    assert NegativeSampler("cat", "item", "w", seed=-1, device="cpu").seed == 2**64 - 1
    assert SamplerConfig.from_arguments(recis_options={}, owner="x", sample_tag="c", dedup_tag="i", weight_tag="w",
                                        seed=np.int64(3)).to_wire()["seed"] == 3
