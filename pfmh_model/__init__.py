"""PFMH machine learning: data, non-IID partitioning, network, losses, prototypes, training, retrieval.

Pure torch/numpy/h5py. Knows nothing of gRPC, cryptography or the daemons (enforced by
tests/test_layering.py).
"""
