"""DeepCache (Ma et al., CVPR 2024) on diffusers' ``UNet2DConditionModel``, as two networks a server
can export and batch: the full UNet, which also returns the feature DeepCache caches, and a shallow UNet
that starts from that feature.

DeepCache's reference (``DeepCacheSDHelper`` of the PyPI ``DeepCache`` package) numbers the UNet's
*branches* from the shallowest: branch ``3 * b + l`` is layer ``l`` of block ``b`` (down block ``b`` and
its mirror up block). On a cached step it computes only the layers shallower than the branch: the time
embedding, ``conv_in``, down blocks ``0 .. b-1``, the first ``l`` layers of down block ``b``, then up
block ``b`` from its layer ``l`` upwards and every shallower up block, ``conv_out``. Every other layer
returns what it returned at the last full step. Of those cached outputs exactly one reaches a computed
layer: the hidden state entering up block ``b``'s layer ``l`` (before its skip connection is
concatenated). That one tensor is :func:`deep_feature` here: the full UNet returns it, and the shallow
UNet takes it instead of computing the deep layers. A shallow call given the feature of a full call on
the same inputs therefore returns that full call's prediction exactly (:func:`check_shallow`), which is
how the export checks the shallow graph against diffusers' own forward.

The shallow forward below is written by hand, line for line after ``UNet2DConditionModel.forward`` and
its blocks' ``forward`` (diffusers 0.42), because no library exports part of a UNet: DeepCache itself
works by monkey-patching every block of a live torch module, which no graph exporter can follow.
"""

from __future__ import annotations

from typing import Any

import torch

BRANCH_LAYERS = 3  # DeepCacheSDHelper: cache_layer_id = branch % 3, cache_block_id = branch // 3


def branch_count(unet: torch.nn.Module) -> int:
    """How many branches ``unet`` has (DeepCache's ``cache_branch_id`` is below it)."""
    return BRANCH_LAYERS * len(unet.down_blocks)


def check_branches(unet: torch.nn.Module, branches: tuple[int, ...]) -> tuple[int, ...]:
    """``branches`` sorted, each checked against ``unet`` (a UNet whose up blocks do not have the
    three layers DeepCache's numbering assumes is refused)."""
    count = branch_count(unet)
    for branch in branches:
        if not 0 <= branch < count:
            raise ValueError(f"DeepCache branch {branch}: this UNet has branches 0-{count - 1}")
    if any(len(block.resnets) != BRANCH_LAYERS for block in unet.up_blocks):
        raise ValueError("DeepCache needs up blocks of 3 layers (layers_per_block 2), as SD 1.5/2 and SDXL")
    return tuple(sorted(set(branches)))


def feature_shapes(unet: torch.nn.Module, branches: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """(branch, channels, latent pixels per feature pixel) of each branch's feature: up block ``b``
    works at 1/2^b of the latents; its first layer takes the deeper block's output (the mid block's for
    the deepest), its others the block's own channels."""
    channels = [int(c) for c in unet.config.block_out_channels]
    shapes = []
    for branch in check_branches(unet, branches):
        block = branch // BRANCH_LAYERS
        _, layer = _position(unet, branch)
        width = channels[min(block + 1, len(channels) - 1)] if layer == 0 else channels[block]
        shapes.append((branch, width, 2**block))
    return tuple(shapes)


def _position(unet: torch.nn.Module, branch: int) -> tuple[int, int]:
    """(index in ``unet.up_blocks``, index of the layer in that block) where ``branch``'s feature
    enters: DeepCache numbers up blocks and their layers from the output side."""
    block, layer = divmod(branch, BRANCH_LAYERS)
    up_index = len(unet.up_blocks) - 1 - block
    return up_index, len(unet.up_blocks[up_index].resnets) - 1 - layer


def _unet_call(unet: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    sample, timestep, encoder_hidden_states, *conditions = inputs
    added = None if not conditions else {"text_embeds": conditions[0], "time_ids": conditions[1]}
    return unet(
        sample, timestep.reshape(-1), encoder_hidden_states=encoder_hidden_states,
        added_cond_kwargs=added, return_dict=False,
    )[0]  # fmt: skip


class DeepCacheUnet(torch.nn.Module):
    """The UNet's role module with DeepCache branches: the noise prediction, then each branch's feature
    (captured by hooks on diffusers' own forward, so the full call is diffusers' computation)."""

    def __init__(self, unet: torch.nn.Module, branches: tuple[int, ...]) -> None:
        super().__init__()
        self.unet = unet
        self.branches = check_branches(unet, branches)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: dict[int, torch.Tensor] = {}
        handles = [self._capture(branch, captured) for branch in self.branches]
        try:
            noise = _unet_call(self.unet, inputs)
        finally:
            for handle in handles:
                handle.remove()
        return (noise, *(captured[branch] for branch in self.branches))

    def _capture(self, branch: int, captured: dict[int, torch.Tensor]) -> Any:
        up_index, layer = _position(self.unet, branch)
        block = self.unet.up_blocks[up_index]
        if layer == 0:  # the block's input

            def before(module: Any, args: tuple, kwargs: dict) -> None:
                captured[branch] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

            return block.register_forward_pre_hook(before, with_kwargs=True)
        # the previous layer's output: its attention's where the block has attention, else its resnet's
        layers = block.attentions if getattr(block, "attentions", None) else block.resnets
        previous = layers[layer - 1]

        def after(module: Any, args: tuple, output: Any) -> None:
            captured[branch] = output[0] if isinstance(output, tuple) else output

        return previous.register_forward_hook(after)


class ShallowUnet(torch.nn.Module):
    """DeepCache's cached step for one branch: the UNet's inputs and the branch's feature (last) in, the
    noise prediction out."""

    def __init__(self, unet: torch.nn.Module, branch: int) -> None:
        super().__init__()
        check_branches(unet, (branch,))
        self.unet = unet
        self.block, self.layer = divmod(branch, BRANCH_LAYERS)
        self.up_index, self.up_layer = _position(unet, branch)

    def prune(self) -> None:
        """Drop the blocks this branch never runs (the mid block, the deeper down and up blocks), for a
        process that serves only the shallow network (the gpu-torch runtime): the UNet it was built
        from is its own copy."""
        unet = self.unet
        unet.mid_block = None
        for index in range(self.block + 1, len(unet.down_blocks)):
            unet.down_blocks[index] = torch.nn.Identity()
        for index in range(self.up_index):
            unet.up_blocks[index] = torch.nn.Identity()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        *conditions, feature = rest
        encoder_hidden_states, *extra = conditions
        added = None if not extra else {"text_embeds": extra[0], "time_ids": extra[1]}
        unet = self.unet
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        emb = self._embedding(sample, timestep.reshape(-1), encoder_hidden_states, added)
        encoder_hidden_states = unet.process_encoder_hidden_states(encoder_hidden_states, added)
        sample = unet.conv_in(sample)
        res_samples: tuple[torch.Tensor, ...] = (sample,)
        for down_block in unet.down_blocks[: self.block]:
            sample, block_res = _down_block(down_block, sample, emb, encoder_hidden_states)
            res_samples += block_res
        down_block = unet.down_blocks[self.block]
        for index in range(self.layer):  # the branch block's layers above the cached ones
            sample = _layer(down_block, index, sample, emb, encoder_hidden_states)
            res_samples += (sample,)
        sample = feature
        upsample_size = None
        for up_index in range(self.up_index, len(unet.up_blocks)):
            up_block = unet.up_blocks[up_index]
            first = self.up_layer if up_index == self.up_index else 0
            for index in range(first, len(up_block.resnets)):
                res, res_samples = res_samples[-1], res_samples[:-1]
                sample = _layer(up_block, index, torch.cat([sample, res], dim=1), emb, encoder_hidden_states)
            if up_index < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = res_samples[-1].shape[2:]
            for upsampler in up_block.upsamplers or ():
                sample = upsampler(sample, upsample_size)
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)

    def _embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The time (and SDXL's text-time) embedding, as ``UNet2DConditionModel.forward`` makes it."""
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug_emb = unet.get_aug_embed(
            emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added
        )
        if aug_emb is not None:
            emb = emb + aug_emb
        return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


def _down_block(
    block: torch.nn.Module, sample: torch.Tensor, emb: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
    return block(hidden_states=sample, temb=emb)


def _layer(
    block: torch.nn.Module,
    index: int,
    sample: torch.Tensor,
    emb: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> torch.Tensor:
    """One layer of a down or up block: its resnet, then its attention where the block has one."""
    sample = block.resnets[index](sample, emb)
    attentions = getattr(block, "attentions", None)
    if attentions:
        sample = attentions[index](sample, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    return sample


def check_shallow(unet: torch.nn.Module, branch: int, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest difference between the full UNet's prediction and the shallow one started from the
    full call's own feature (0 up to float rounding when the shallow forward is diffusers')."""
    with torch.no_grad():
        noise, feature = DeepCacheUnet(unet, (branch,))(*inputs)
        shallow = ShallowUnet(unet, branch)(*inputs, feature)
    return float((noise - shallow).abs().max())
