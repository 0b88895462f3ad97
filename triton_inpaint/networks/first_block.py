"""The first-block cache (ParaAttention's "First Block Cache"; diffusers' ``apply_first_block_cache``) on
FLUX's transformer, as networks a server can export and batch.

diffusers runs it with hooks on a live module: on every step the first transformer block runs; when its
residual (its output less its input) moved more than the threshold from the residual of the last step
that ran in full, every other block runs too, and the residual of the rest (the last block's output less
the first block's) is kept; otherwise the other blocks are skipped and that kept residual is added to
the first block's output. ``norm_out`` and ``proj_out`` run either way.

The same computation as three networks over the same weights:

- the full transformer (:class:`FullTransformer`), which also returns both residuals: a step that must
  run in full (the first, or one outside the caching window) is one call;
- the head (:class:`FirstBlock`): the embeddings and the first block, returning its output (image and
  text tokens), its residual, and the prediction the step makes if the rest is skipped (from the kept
  residual, an input);
- the tail (:class:`RemainingBlocks`): every other block from the head's output, returning the
  prediction and the rest's residual.

Written by hand after ``FluxTransformer2DModel.forward`` (diffusers 0.42): no library exports part of a
transformer, and hooks on a live module are invisible to graph exporters. :func:`check_split` is the
proof that the halves are diffusers' forward.
"""

from __future__ import annotations

import torch


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Every block in the order the forward runs them (dual-stream, then single-stream): diffusers'
    first-block cache takes the first of them as its head."""
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def _conditioning(
    transformer: torch.nn.Module,
    dtype: torch.dtype,
    timestep: torch.Tensor,
    guidance: torch.Tensor,
    pooled_projections: torch.Tensor,
    txt_ids: torch.Tensor,
    img_ids: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The time-text embedding and the rotary position embedding, as the forward makes them (scalars
    arrive as (B, 1) and ids with a batch axis, for Triton's batching: see torch_networks.FluxTransformer)."""
    timestep = timestep.reshape(-1).to(dtype) * 1000
    if transformer.config.guidance_embeds:
        guidance = guidance.reshape(-1).to(dtype) * 1000
        temb = transformer.time_text_embed(timestep, guidance, pooled_projections)
    else:
        temb = transformer.time_text_embed(timestep, pooled_projections)
    rotary = transformer.pos_embed(torch.cat((txt_ids[0], img_ids[0]), dim=0))
    return temb, rotary


def _run(
    blocks: list[torch.nn.Module],
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    for block in blocks:
        encoder_hidden_states, hidden_states = block(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
            image_rotary_emb=rotary,
        )  # fmt: skip
    return hidden_states, encoder_hidden_states


class _Split(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def _output(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.transformer.proj_out(self.transformer.norm_out(hidden_states, temb))

    def _head(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
        pooled_projections: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(first block's image tokens, its text tokens, its residual, the time-text embedding)."""
        transformer = self.transformer
        hidden_states = transformer.x_embedder(hidden_states)
        temb, rotary = _conditioning(
            transformer, hidden_states.dtype, timestep, guidance, pooled_projections, txt_ids, img_ids
        )
        encoder_hidden_states = transformer.context_embedder(encoder_hidden_states)
        head, encoder = _run(_blocks(transformer)[:1], hidden_states, encoder_hidden_states, temb, rotary)
        return head, encoder, head - hidden_states, temb


class FullTransformer(_Split):
    """The whole transformer (the ``transformer`` role, exported with the first-block cache): the
    prediction, the first block's residual and the rest's."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        head, encoder, head_residual, temb = self._head(*inputs)
        *_, txt_ids, img_ids = inputs
        rotary = self.transformer.pos_embed(torch.cat((txt_ids[0], img_ids[0]), dim=0))
        hidden, _ = _run(_blocks(self.transformer)[1:], head, encoder, temb, rotary)
        return self._output(hidden, temb), head_residual, hidden - head


class FirstBlock(_Split):
    """The head: the transformer's inputs and the kept residual of the rest (last) in; the first block's
    image and text tokens, its residual, and the prediction were the rest skipped, out."""

    def prune(self) -> None:
        """Drop the blocks the head never runs, for a process that serves only it (gpu-torch)."""
        transformer = self.transformer
        transformer.transformer_blocks = transformer.transformer_blocks[:1]
        transformer.single_transformer_blocks = torch.nn.ModuleList()

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *inputs, tail_residual = inputs
        head, encoder, head_residual, temb = self._head(*inputs)
        return head, encoder, head_residual, self._output(head + tail_residual, temb)


class RemainingBlocks(_Split):
    """The tail: the first block's image and text tokens and the step's conditions in; the prediction
    and the rest's residual out."""

    def prune(self) -> None:
        """Drop what the tail never runs (the input embeddings, the first block), for gpu-torch."""
        transformer = self.transformer
        transformer.x_embedder = transformer.context_embedder = None
        transformer.transformer_blocks[0] = torch.nn.Identity()

    def forward(
        self,
        hidden_states_head: torch.Tensor,
        encoder_hidden_states_head: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
        pooled_projections: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        transformer = self.transformer
        temb, rotary = _conditioning(
            transformer, hidden_states_head.dtype, timestep, guidance, pooled_projections, txt_ids, img_ids
        )
        blocks = _blocks(transformer)[1:]
        hidden, _ = _run(blocks, hidden_states_head, encoder_hidden_states_head, temb, rotary)
        return self._output(hidden, temb), hidden - hidden_states_head


def check_split(transformer: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest difference between diffusers' forward and the head then the tail (and the full split
    transformer), on the same inputs; 0 up to float rounding when the halves are diffusers'."""
    hidden_states, timestep, guidance, pooled, states, txt_ids, img_ids = inputs
    with torch.no_grad():
        want = transformer(
            hidden_states=hidden_states, timestep=timestep.reshape(-1), guidance=guidance.reshape(-1),
            pooled_projections=pooled, encoder_hidden_states=states, txt_ids=txt_ids[0], img_ids=img_ids[0],
            return_dict=False,
        )[0]  # fmt: skip
        full, _, tail_residual = FullTransformer(transformer)(*inputs)
        head, encoder, _, skipped = FirstBlock(transformer)(*inputs, tail_residual)
        split, _ = RemainingBlocks(transformer)(head, encoder, timestep, guidance, pooled, txt_ids, img_ids)
    return max(float((want - got).abs().max()) for got in (full, split, skipped))
