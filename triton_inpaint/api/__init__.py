"""The request contract: every control and its range (schema, params), the tensors between the Triton
models (contract), the errors callers see, network role and scheduler names, and image encoding.

Torch-free and free of every other layer of ours, so the client and the gateway import it alone
(checked by tests/test_import_contracts.py).
"""
