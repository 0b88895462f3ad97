"""The networks of each checkpoint architecture by role, and their tensor names: plain data, importable
without torch (the CLI and config writers need it; :mod:`triton_inpaint.networks.runners` runs the networks).
"""

from __future__ import annotations

TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
UNET = "unet"
TRANSFORMER = "transformer"

# Input and output tensor names of each exported network, per family. SDXL's text encoders return the
# penultimate hidden states (and the second one its pooled projection); its UNet takes the pooled text
# embeddings and the size/crop time ids as extra conditions.
SD_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("last_hidden_state",)),
    VAE_ENCODER: (("sample",), ("latent_parameters",)),
    VAE_DECODER: (("latent_sample",), ("sample",)),
    UNET: (("sample", "timestep", "encoder_hidden_states"), ("noise_pred",)),
}
SDXL_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("hidden_states",)),
    TEXT_ENCODER_2: (("input_ids",), ("hidden_states", "text_embeds")),
    VAE_ENCODER: SD_TENSORS[VAE_ENCODER],
    VAE_DECODER: SD_TENSORS[VAE_DECODER],
    UNET: (("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"), ("noise_pred",)),
}
# FLUX: CLIP gives only its pooled output, T5 the sequence; the transformer takes packed latents with
# the packed mask and masked-image latents, the guidance value, and the text and image position ids
# (with a batch axis, which diffusers' transformer does not have, so that Triton can batch them).
FLUX_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("pooler_output",)),
    TEXT_ENCODER_2: (("input_ids",), ("last_hidden_state",)),
    VAE_ENCODER: SD_TENSORS[VAE_ENCODER],
    VAE_DECODER: SD_TENSORS[VAE_DECODER],
    TRANSFORMER: (
        (
            "hidden_states",
            "timestep",
            "guidance",
            "pooled_projections",
            "encoder_hidden_states",
            "txt_ids",
            "img_ids",
        ),
        ("noise_pred",),
    ),
}
_TENSORS = {"sd": SD_TENSORS, "sdxl": SDXL_TENSORS, "flux": FLUX_TENSORS}


# The last input of a network exported with LoRA adapters: (B, adapters), each row's weight of each
# adapter (triton_inpaint.networks.lora).
LORA_SCALES = "lora_scales"


def network_tensors(
    architecture: str, lora_roles: tuple[str, ...] = ()
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per network role, its (input names, output names); ``architecture`` is ``sd``, ``sdxl`` or
    ``flux`` (:attr:`PipelineSpec.architecture`); the roles in ``lora_roles`` (the spec's) also take
    :data:`LORA_SCALES`."""
    tensors = _TENSORS[architecture]
    if not lora_roles:
        return tensors
    return {
        role: ((*inputs, LORA_SCALES), outputs) if role in lora_roles else (inputs, outputs)
        for role, (inputs, outputs) in tensors.items()
    }
