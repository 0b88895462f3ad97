"""The inpainting pipelines (SD and FLUX Fill), the plan they share, the in-flight batcher that steps
several requests together, the memory model that admits them, and the per-checkpoint spec saved at
export. No Triton import: ``triton/denoise.py`` adapts them to the server.
"""
