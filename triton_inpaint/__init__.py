"""triton-inpaint: image inpainting served by NVIDIA Triton, identical to the diffusers reference.

The package holds the logic every other part shares (image codecs, request parameters, the denoising
pipeline, scheduler names, the embedded Triton launcher); the Triton ``model.py`` files, the export
step and the client are thin layers over it.
"""

__version__ = "0.1.0"
