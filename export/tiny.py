"""Tiny diffusers checkpoints with seeded random weights, built offline.

Model hubs are unreachable on CI and on a newcomer's first run, so tests and the demo build their
checkpoint from configs, the way diffusers' own tests do (``get_dummy_components``): a manual seed
before each component makes the weights, and therefore the saved bytes, a function of the seed alone.
The tiny models are architecturally real (9-channel inpainting UNet, KL VAE with an 8x scale factor,
CLIP text encoder and BPE tokenizer; for FLUX Fill a T5 encoder with a Unigram tokenizer and a
transformer over packed latents), so every code path that serves a real checkpoint runs on them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
    ViTImageProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from triton_inpaint.pipelines.spec import CLIPSEG, TINY_MODELS, TINY_SIZES

# FAMILIES: *-inpaint: 9-channel inpainting UNet (mask and masked-image latents concatenated to its
# input). *-base: 4-channel base UNet, inpainting by blending the noised original latents every step.
# flux-fill: FLUX.1 Fill (transformer over packed latents, the mask packed into its input).
TINY_T5_SEQUENCE = 32  # the tiny FLUX checkpoint's T5 length (FLUX.1 Fill: 512)
TINY_RESOLUTION = 128  # native resolution of the tiny SD 1.5 checkpoint: 16x16 latents
SMALL_RESOLUTION = 256  # native resolution of the small one (``size="small"``): 32x32 latents
FULL_SD15_RESOLUTION = 512
FULL_SDXL_RESOLUTION = 1024
SIZES = TINY_SIZES
CLIP_VOCAB = 49408  # the real CLIP vocabulary size (our in-code tokenizer uses the first few hundred ids)
_TOKENIZER_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "blue",
    "green",
    "apple",
    "cat",
    "dog",
    "sky",
    "tree",
    "house",
    "wall",
    "painting",
    "sunset",
    "beach",
    "face",
    "person",
    "background",
    "hat",
    "flower",
    "mountain",
    "lake",
]


def build_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with an in-code vocabulary.

    The vocabulary is the 256 byte-level symbols (plain and word-final), the two CLIP specials and
    the merges that spell a short list of words, so common prompt words become single tokens the way
    they do with the real CLIP vocabulary. No file is read or downloaded.
    """
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = list(bytes_to_unicode().values())
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _TOKENIZER_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_t5_tokenizer() -> T5TokenizerFast:
    """A T5 (SentencePiece Unigram) tokenizer with an in-code vocabulary.

    Built with the ``tokenizers`` library as T5's own is: Unigram pieces, the Metaspace pre-tokenizer
    ("▁" marks a word start), ``</s>`` appended; whole words for the short word list, single
    characters for everything else. No file is read or downloaded.
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -2.0) for word in _TOKENIZER_WORDS]
    pieces += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=TINY_T5_SEQUENCE,
    )


def _tiny_unet(seed: int, in_channels: int, **family_config: object) -> UNet2DConditionModel:
    """The tiny UNet both families share: two blocks, one with cross-attention; 16x16 native latents."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **family_config,
    )


def _tiny_vae(seed: int, scaling_factor: float, **family_config: object) -> AutoencoderKL:
    """Four blocks, so the scale factor is 8 as in every real SD/SDXL/FLUX VAE."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        **family_config,
    )


def _tiny_clip_config(tokenizer: CLIPTokenizer, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        projection_dim=projection_dim,
    )


def full_clip_config(
    tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int, activation: str
) -> CLIPTextConfig:
    """A real CLIP text tower's shape: ViT-L/14 (768 wide, 12 layers) or OpenCLIP bigG (1280, 32)."""
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        hidden_act=activation,
        vocab_size=CLIP_VOCAB,
        max_position_embeddings=77,
        projection_dim=hidden,
    )


def full_vae(seed: int, scaling_factor: float, resolution: int) -> AutoencoderKL:
    """The VAE of SD 1.5 and SDXL (84 M parameters)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=resolution,
        scaling_factor=scaling_factor,
    )


def full_sd15_unet(seed: int, in_channels: int) -> UNet2DConditionModel:
    """SD 1.5's UNet (860 M parameters): four blocks, cross-attention in the first three."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=FULL_SD15_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def full_sdxl_unet(seed: int, in_channels: int) -> UNet2DConditionModel:
    """SDXL 1.0's UNet (2.6 B parameters): three blocks, 1/2/10 transformer layers, text-time conditions."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=FULL_SDXL_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + pooled bigG text (1280)
    )


def build_sdxl(
    seed: int = 0, denoiser_in_channels: int = 9, size: str = "tiny"
) -> StableDiffusionXLInpaintPipeline:
    """A tiny SDXL pipeline: two CLIP encoders (the second with a projection), a text-time UNet
    conditioned on pooled embeddings and 6 size/crop time ids (as SDXL 1.0), the 4-block VAE.
    ``size="full"``: SDXL 1.0's architecture (ViT-L + bigG text encoders) with random weights."""
    if size not in ("tiny", "full"):
        raise ValueError(f"--size {size}: SDXL comes in tiny and full")
    tokenizer = build_clip_tokenizer()
    if size == "full":
        unet = full_sdxl_unet(seed, denoiser_in_channels)
        vae = full_vae(seed, 0.13025, FULL_SDXL_RESOLUTION)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(full_clip_config(tokenizer, 768, 12, 12, "quick_gelu"))
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(full_clip_config(tokenizer, 1280, 32, 20, "gelu"))
        return _sdxl_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer)
    unet = _tiny_unet(
        seed,
        denoiser_in_channels,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
        cross_attention_dim=64,  # both text encoders' hidden states side by side
    )
    vae = _tiny_vae(seed, scaling_factor=0.13025)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer))
    return _sdxl_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer)


def _sdxl_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
) -> StableDiffusionXLInpaintPipeline:
    # The scheduler config of the real SDXL checkpoints.
    scheduler = EulerDiscreteScheduler.from_config(
        {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "steps_offset": 1,
            "timestep_spacing": "leading",
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "clip_sample": False,
            "sample_max_value": 1.0,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
        }
    )
    return StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _small_unet(seed: int, in_channels: int) -> UNet2DConditionModel:
    """SD 1.5's UNet shape at a fifth of its width (four blocks, cross-attention in three, eight
    heads; 34 M parameters against 860 M): compute dominates a step as it does with real weights,
    while a step stays fast enough for a benchmark on a CPU."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=2,
        sample_size=SMALL_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=8,
    )


def build_sd15(
    seed: int = 0, denoiser_in_channels: int = 9, size: str = "tiny"
) -> StableDiffusionInpaintPipeline:
    """A tiny SD 1.5 pipeline: 9-channel (inpainting) or 4-channel (base) UNet, 4-block VAE (scale
    factor 8), CLIP. ``size="small"``: an SD-1.5-shaped UNet and a wider VAE at 256 px (benchmarks)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    tokenizer = build_clip_tokenizer()
    if size == "full":  # SD 1.5's own architecture: UNet 860 M, ViT-L/14 text encoder, 84 M VAE
        unet = full_sd15_unet(seed, denoiser_in_channels)
        vae = full_vae(seed, 0.18215, FULL_SD15_RESOLUTION)
    elif size == "small":
        unet = _small_unet(seed, denoiser_in_channels)
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=(32, 64, 128, 128),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=SMALL_RESOLUTION,
            scaling_factor=0.18215,
        )
    else:
        unet = _tiny_unet(seed, denoiser_in_channels, cross_attention_dim=32, attention_head_dim=8)
        vae = _tiny_vae(seed, scaling_factor=0.18215)
    torch.manual_seed(seed)
    if size == "full":
        text_encoder = CLIPTextModel(full_clip_config(tokenizer, 768, 12, 12, "quick_gelu"))
    else:
        text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    # The scheduler config of the real SD 1.5 inpainting checkpoint, ``clip_sample: false`` included:
    # every scheduler swapped in by name inherits it. It matters for tests too: DDIM's default
    # clip_sample=True makes a random-weight model chaotic (a 1e-7 change in one UNet output moves the
    # final image by 8/255), while with the real config ONNX and torch agree to 1/255.
    scheduler = PNDMScheduler.from_config(
        {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "skip_prk_steps": True,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "clip_sample": False,
        }
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_flux_fill(seed: int = 0) -> FluxFillPipeline:
    """A tiny FLUX.1 Fill pipeline, after diffusers' ``test_pipeline_flux_fill.py`` dummy components,
    with a VAE of scale factor 8 (16 latent channels in FLUX.1, 4 here) so that the mask packing runs
    with the real 8x8 pixel blocks: the transformer reads 4x4 packed latents, as many packed masked-image
    latents and 4x64 mask channels. The scheduler config is FLUX.1's (dynamic shifting)."""
    tokenizer = build_clip_tokenizer()
    latent_channels = 4
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=2 * 4 * latent_channels + 4 * 8 * 8,
        out_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    )
    vae = _tiny_vae(
        seed,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxFillPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_clipseg(seed: int = 0) -> tuple[CLIPSegForImageSegmentation, CLIPSegProcessor]:
    """A tiny CLIPSeg (text-prompted segmentation): CLIP text and vision towers with the decoder on top,
    and the processor of CIDAS/clipseg-rd64-refined (352 px, ImageNet mean and std) with the in-code
    CLIP tokenizer."""
    tokenizer = build_clip_tokenizer()
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 16,
        },
        projection_dim=16,
        extract_layers=[0, 1, 2],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": 352, "width": 352},
        resample=2,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return model, CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


def write_tiny_checkpoint(family: str, out: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write a tiny checkpoint in diffusers' ``save_pretrained`` layout (``clipseg``: transformers'
    layout, as an operator's CLIPSeg weights directory); same seed, same bytes. ``size="small"``
    (SD 1.5 families only) writes the benchmark's SD-1.5-shaped model."""
    if family not in TINY_MODELS:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(TINY_MODELS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    if size == "small" and not family.startswith("sd15"):
        raise ValueError("--size small: only the sd15 families come in that size")
    if size == "full" and not family.startswith(("sd15", "sdxl")):
        raise ValueError("--size full: the sd15 and sdxl families come in that size")
    if family == CLIPSEG:
        model, processor = build_clipseg(seed)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        return out
    if family == "flux-fill":
        pipeline = build_flux_fill(seed)
    else:
        channels = 9 if family.endswith("-inpaint") else 4
        if family.startswith("sdxl"):
            pipeline = build_sdxl(seed, denoiser_in_channels=channels, size=size)
        else:
            pipeline = build_sd15(seed, denoiser_in_channels=channels, size=size)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
