"""RecIS's LocalRpcDataSampler usage example, run against gpu_negsample's LocalRpcDataSampler.

The body of ``neg_sampling_fn`` and the sampler calls are RecIS's documentation example
as written; only the import differs, and the ODPS datasets are replaced by a synthetic
catalogue (the negative table) and positive batches drawn from it by popularity. Run it
as one process, or as several (``torchrun --nproc_per_node=8 examples/recis_usage.py``):
local rank 0 starts the node's sampling server and loads the table, the others wait for it.
"""
import os

import numpy as np
import torch

from gpu_negsample import LocalRpcDataSampler  # the only changed import
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

sample_tag, dedup_tag, weight_tag, skey_name = SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY
sample_size = 5


def build(n_items=50_000, n_categories=100):
    catalogue = make_catalogue(n_items, n_categories, seed=11)
    # RecIS's murmurhash(0) default id must be in the table: give it to one item.
    catalogue.table[dedup_tag].values()[0] = 5533571732986600803
    catalogue.ids[0] = 5533571732986600803

    neg_sampler = LocalRpcDataSampler(
        sample_tag,
        dedup_tag,
        weight_tag,
        skey_name,
    )
    if int(os.environ.get("LOCAL_PROCESS_RANK", 0)) == 0:
        neg_data = [catalogue.table]  # RecIS: next(iter(neg_dataset))[1]
        neg_sampler.reload(neg_data)

    def neg_sampling_fn(batch):
        sample_tag_ragged_tensor = batch[0][sample_tag]
        dedup_tag_ragged_tensor = batch[0][dedup_tag]
        sample_cnts = sample_size - torch.ones_like(dedup_tag_ragged_tensor.values())
        neg_sample_ids = neg_sampler.sample_ids(
            dedup_tag_ragged_tensor=dedup_tag_ragged_tensor,
            sample_cnts=sample_cnts,
            sample_tag_ragged_tensor=sample_tag_ragged_tensor,
        )
        pos_ids = neg_sampler.valid_sample_ids(
            dedup_tag_ragged_tensor.values(), default_value=5533571732986600803
        )
        pos_neg_ids = neg_sampler.combine_vector_with_sample_counts(pos_ids, sample_cnts, neg_sample_ids)
        output_sample_table = neg_sampler.pack_feature(pos_neg_ids, default_value=5533571732986600803)
        combined_batch = neg_sampler.combine(batch, output_sample_table, sample_cnts)
        return combined_batch

    neg_sampling_fn.sampler = neg_sampler  # so a caller can close it
    return catalogue, neg_sampling_fn


def main(n_batches=10, batch_size=1024):
    catalogue, neg_sampling_fn = build()
    rng = np.random.default_rng(0)
    for _ in range(n_batches):
        batch = positive_batch(catalogue, batch_size, rng)
        batch[0]["_sample_group_id"] = torch.arange(batch_size)
        batch.append({"_indicator_user": torch.arange(batch_size) // 4, "user_id": torch.arange(batch_size // 4)})
        combined = neg_sampling_fn(batch)
    print({k: getattr(v, "shape", v) for k, v in combined[0].items()})
    neg_sampling_fn.sampler.close()
    return combined


if __name__ == "__main__":
    # RecIS reads LOCAL_PROCESS_RANK; under torchrun take it from LOCAL_RANK (RecIS's docs ask
    # the user to set it by hand outside whole-node jobs).
    os.environ.setdefault("LOCAL_PROCESS_RANK", os.environ.get("LOCAL_RANK", "0"))
    main()
