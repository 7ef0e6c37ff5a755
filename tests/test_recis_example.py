"""RecIS's documented usage example runs against LocalRpcDataSampler with only the import changed
(one process here; eight in test_server.py)."""
import importlib.util
import pathlib

import numpy as np
import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "recis_usage.py"


def load_example():
    spec = importlib.util.spec_from_file_location("recis_usage", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recis_usage_example_runs_and_is_consistent():
    example = load_example()
    catalogue, fn = example.build(n_items=5000, n_categories=20)
    rng = np.random.default_rng(1)
    batch = example.positive_batch(catalogue, 64, rng)
    batch[0]["_sample_group_id"] = torch.arange(64)
    batch.append({"_indicator_user": torch.arange(64) // 4})
    out = fn(batch)
    table = out[0]  # on the default device: a GPU where there is one
    per = example.sample_size
    ids = table[example.dedup_tag].values().cpu().reshape(64, per)
    positives = batch[0][example.dedup_tag].values()
    assert torch.equal(ids[:, 0], positives)  # every positive is in the table
    assert not (ids[:, 1:] == positives[:, None]).any()
    cats = table[example.sample_tag].values().cpu().reshape(64, per)
    assert torch.equal(cats, batch[0][example.sample_tag].values()[:, None].expand(64, per))
    assert table["_sample_group_id"].tolist() == [g for g in range(64) for _ in range(per)]
    assert out[1]["_indicator_user"].tolist() == [g // 4 for g in range(64) for _ in range(per)]
    assert table[example.skey_name].shape == (64 * per,)
    fn.sampler.close()
