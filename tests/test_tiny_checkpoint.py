import hashlib
from pathlib import Path

from diffusers import StableDiffusionInpaintPipeline

from triton_inpaint.export.tiny import build_clip_tokenizer, build_t5_tokenizer, write_tiny_checkpoint


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_checkpoint):
    again = write_tiny_checkpoint("sd15-inpaint", tmp_path / "again", seed=0)
    other = write_tiny_checkpoint("sd15-inpaint", tmp_path / "other", seed=1)
    assert _digest(again) == _digest(tiny_checkpoint)
    differing = {k for k, v in _digest(other).items() if _digest(again)[k] != v}
    assert "unet/diffusion_pytorch_model.safetensors" in differing


def test_loads_with_the_reference_pipeline(tiny_checkpoint):
    pipeline = StableDiffusionInpaintPipeline.from_pretrained(tiny_checkpoint, safety_checker=None)
    assert pipeline.unet.config.in_channels == 9
    assert 2 ** (len(pipeline.vae.config.block_out_channels) - 1) == 8
    assert pipeline.tokenizer.model_max_length == 77


def test_tokenizer_merges_known_words_and_pads_to_77():
    tokenizer = build_clip_tokenizer()
    ids = tokenizer("a red apple", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    # bos, a, red, apple, eos: known words are single tokens.
    assert ids[:5] == [
        tokenizer.bos_token_id,
        *tokenizer.convert_tokens_to_ids(["a</w>", "red</w>", "apple</w>"]),
        tokenizer.eos_token_id,
    ]


def test_t5_tokenizer_words_characters_and_eos():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("a red apple xyz", padding="max_length", max_length=12).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # Known words are one piece each, other words fall back to characters; </s> then padding.
    assert pieces[:3] == ["\u2581a", "\u2581red", "\u2581apple"]
    assert pieces[pieces.index("</s>") - 3 : pieces.index("</s>")] == ["x", "y", "z"]
    assert ids[-1] == tokenizer.pad_token_id and len(ids) == 12
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red apple xyz"


def test_flux_fill_checkpoint_is_deterministic_and_loads(tmp_path):
    from diffusers import FluxFillPipeline

    first = write_tiny_checkpoint("flux-fill", tmp_path / "first", seed=0)
    again = write_tiny_checkpoint("flux-fill", tmp_path / "again", seed=0)
    assert _digest(first) == _digest(again)
    pipeline = FluxFillPipeline.from_pretrained(first)
    assert pipeline.transformer.config.guidance_embeds
    assert pipeline.tokenizer_2.model_max_length == 32
    assert type(pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
