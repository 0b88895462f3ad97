"""Triton Python-backend model implementations; each model.py in a repository re-exports one."""
