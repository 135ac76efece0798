"""Pruning math: mask selection (unstructured, N:M), magnitude, Wanda and SparseGPT.

Pure functions on tensors; the registered methods live in ``core.methods`` and the
sparse storage formats in ``core.storage``.
"""
