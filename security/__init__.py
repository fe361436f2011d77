"""Security library: secure aggregation, fixed-point encoding, differential privacy, PKI, audit ledger.

Pure numpy/cryptography. Knows nothing of torch or gRPC; the one exemption is the Opacus
accountant adapter, which imports opacus (and so torch) lazily inside itself only.
"""
