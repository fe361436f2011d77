"""The site daemon: local training, DP and masking of its upload, budget ledger, local retrieval."""
