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

# Step caching. DeepCache (triton_inpaint.networks.deep_cache): a UNet exported with branches also
# returns, per branch, the feature its shallow network starts from, and each branch has a shallow network
# (``unet_shallow_<branch>``) that takes that feature. First-block cache (FLUX,
# triton_inpaint.networks.first_block): the transformer also returns its first block's residual and the
# rest's, and comes in two halves too: the first block (with the step's prediction were the rest skipped)
# and the rest.
# The DeepCache branches an export serves unless told: the first block's three, the fastest, whose
# shallow networks are small (docs/controls.md#step-caching).
DEFAULT_DEEP_CACHE_BRANCHES = (0, 1, 2)
TRANSFORMER_HEAD = "transformer_head"
TRANSFORMER_TAIL = "transformer_tail"
HEAD_RESIDUAL, TAIL_RESIDUAL = "head_residual", "tail_residual"
HEAD_OUTPUTS = ("hidden_states_head", "encoder_hidden_states_head")
_FLUX_INPUTS = FLUX_TENSORS[TRANSFORMER][0]
SPLIT_TRANSFORMER_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TRANSFORMER: (_FLUX_INPUTS, ("noise_pred", HEAD_RESIDUAL, TAIL_RESIDUAL)),
    TRANSFORMER_HEAD: ((*_FLUX_INPUTS, TAIL_RESIDUAL), (*HEAD_OUTPUTS, HEAD_RESIDUAL, "noise_pred")),
    TRANSFORMER_TAIL: (
        (*HEAD_OUTPUTS, "timestep", "guidance", "pooled_projections", "txt_ids", "img_ids"),
        ("noise_pred", TAIL_RESIDUAL),
    ),
}


def shallow_role(branch: int) -> str:
    """The role of DeepCache's shallow UNet for ``branch``."""
    return f"{UNET}_shallow_{branch}"


def deep_feature(branch: int) -> str:
    """The tensor the full UNet returns and ``branch``'s shallow UNet starts from."""
    return f"deep_feature_{branch}"


def network_tensors(
    architecture: str,
    lora_roles: tuple[str, ...] = (),
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per network role, its (input names, output names); ``architecture`` is ``sd``, ``sdxl`` or
    ``flux`` (:attr:`PipelineSpec.architecture`); the roles in ``lora_roles`` (the spec's) also take
    :data:`LORA_SCALES`. ``deep_cache_branches`` (SD and SDXL): the UNet also returns each branch's
    feature, and each branch has its shallow UNet; ``first_block_cache`` (FLUX): the transformer's
    two halves too."""
    tensors = dict(_TENSORS[architecture])
    if deep_cache_branches:
        unet_inputs, unet_outputs = tensors[UNET]
        features = tuple(deep_feature(branch) for branch in deep_cache_branches)
        tensors[UNET] = (unet_inputs, (*unet_outputs, *features))
        for branch in deep_cache_branches:
            tensors[shallow_role(branch)] = ((*unet_inputs, deep_feature(branch)), unet_outputs)
    if first_block_cache:
        tensors |= SPLIT_TRANSFORMER_TENSORS
    return {
        role: ((*inputs, LORA_SCALES), outputs) if _banked(role, lora_roles) else (inputs, outputs)
        for role, (inputs, outputs) in tensors.items()
    }


def base_role(role: str) -> str:
    """The checkpoint network a role runs: a shallow UNet is the UNet's, a transformer half the
    transformer's (what its LoRA banks, precision and memory follow)."""
    if role.startswith(UNET + "_shallow_"):
        return UNET
    if role in (TRANSFORMER_HEAD, TRANSFORMER_TAIL):
        return TRANSFORMER
    return role


def _banked(role: str, lora_roles: tuple[str, ...]) -> bool:
    return base_role(role) in lora_roles
