"""Paired RCAN training data: collection (``rcan collect``) and the ``rcan-paired-v1`` reader."""

from __future__ import annotations

from rcan.data.collect import PAIR_DOMAINS, POLICIES, CollectConfig, CollectSummary, collect, make_policy
from rcan.data.paired import FORMAT, PairedDataset, check_shard, read_manifest

__all__ = [
    "FORMAT",
    "PAIR_DOMAINS",
    "POLICIES",
    "CollectConfig",
    "CollectSummary",
    "PairedDataset",
    "check_shard",
    "collect",
    "make_policy",
    "read_manifest",
]
