"""Masks and imaging around the networks: shaping (invert, expand, blur), detectors and text
segmentation that make a mask, the preprocess step, and compositing the result back into the
original. Never loads torch, diffusers, a network runner or a pipeline: the pre/postprocess models
stay small.
"""
