"""Reinforced data: the teacher run once over the training data, its outputs stored beside the data shards.

For every sample, K augmentation records (the crop box of each view, enough to rebuild it exactly), the teacher's
image embedding of each view, its text embedding of the caption and a content fingerprint are written to
sidecar shards aligned with the data shards (:mod:`~clipkd.reinforce.format`), described by a manifest
(:mod:`~clipkd.reinforce.manifest`). Built by ``clipkd reinforce`` (:mod:`~clipkd.build.reinforce`).

Nothing here is imported by ``import clipkd``: the submodules load torch when they need it.
"""
