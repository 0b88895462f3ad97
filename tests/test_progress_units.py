"""Below the server: the streaming ensemble's wiring obeys Triton's rule for decoupled steps, the
memory budget the plain denoise model and its streaming twin share, and the previews' projection."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch

from triton_inpaint.api import contract
from triton_inpaint.pipelines.batching import Admission, SharedLedger
from triton_inpaint.pipelines.previews import PREVIEW_SIDE, preview_images


def test_every_tensor_after_the_streaming_denoise_comes_from_it():
    """Triton refuses an ensemble whose step (or response) mixes tensors from a decoupled model with
    tensors from elsewhere: in the stream twin, postprocess and the outputs read only what denoise gave."""
    steps = contract.ensemble_steps("m", stream=True)
    (_, _, pre_out), (denoise, _, denoise_out), (_, post_in, post_out) = steps
    assert denoise == "m_denoise_stream"
    from_denoise = set(denoise_out.values())
    assert set(post_in.values()) <= from_denoise, set(post_in.values()) - from_denoise
    outputs = {spec.name for spec in (*contract.RESPONSE_OUTPUTS, *contract.STREAM_OUTPUTS)}
    assert outputs <= from_denoise | set(post_out.values())
    assert not outputs & set(pre_out.values())
    plain = contract.ensemble_steps("m")
    assert plain[1][0] == "m_denoise" and plain[1][2] == {s.name: s.name for s in contract.DENOISE_OUTPUTS}


def test_two_admissions_keep_one_budget_through_the_ledger(tmp_path):
    ledger = tmp_path / "budget.json"
    plain, stream = Admission(4, 100, SharedLedger(ledger)), Admission(4, 100, SharedLedger(ledger))
    plain.enter(60)
    entered = threading.Event()

    def second() -> None:
        stream.enter(60)
        entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    assert not entered.is_set(), "60 + 60 bytes went over a 100-byte budget"
    stream_small = Admission(4, 100, SharedLedger(ledger))
    stream_small.enter(30)  # fits beside the first
    stream_small.leave(30)
    plain.leave(60)
    assert entered.wait(2), "the waiting request was not let in once the budget freed"
    thread.join()
    stream.leave(60)
    alone = Admission(4, 100, SharedLedger(ledger))
    alone.enter(500)  # alone, a request always gets in
    alone.leave(500)


def test_a_gone_process_reservations_are_dropped(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = tmp_path / "budget.json"
    path.write_text(f'{{"{gone.stdout.strip()}": [3, 1000]}}')
    admission = Admission(4, 100, SharedLedger(path))
    admission.enter(90)  # the dead process's 1000 bytes do not count
    admission.leave(90)


def test_previews_are_the_latents_projected_and_fit_the_preview_side():
    factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    latents = torch.zeros(2, 4, 16, 24)
    latents[1, 0] = 1.0  # full red in the second image
    first, second = preview_images(latents, factors)
    assert first.shape == second.shape == (16 * 10, 24 * 10, 3) and max(first.shape) <= PREVIEW_SIDE
    assert (first == 128).all()  # 0 in [-1, 1] is mid grey
    assert (second[..., 0] == 255).all() and (second[..., 1] == 128).all()


class _LinearVae(torch.nn.Module):
    """A VAE whose encoder is a known linear map of each 2x2 block's colour: the fit must invert it."""

    def __init__(self) -> None:
        super().__init__()
        self.mixing = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, -0.7], [0.1, 0.9, 1.1], [0.4, 0.4, 0.4]])
        self.config = SimpleNamespace(block_out_channels=[8, 8], scaling_factor=0.7, shift_factor=None)
        self.dtype = torch.float32

    def encode(self, images: torch.Tensor) -> SimpleNamespace:
        pooled = torch.nn.functional.avg_pool2d(images, 2)
        mean = torch.einsum("lc,bchw->blhw", self.mixing, pooled) + 0.25
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))


def test_the_fitted_projection_inverts_the_vaes_own_map():
    """Fitted on a VAE whose latents are a known linear map of the colours, the projection gives the
    colours back from latents the way the denoiser holds them (scaled)."""
    from triton_inpaint.pipelines.previews import fit_preview_factors

    vae = _LinearVae()
    factors = fit_preview_factors(SimpleNamespace(vae=vae))
    assert len(factors) == 5 and all(len(row) == 3 for row in factors)
    colour = torch.tensor([0.6, -0.4, 0.2]).reshape(1, 3, 1, 1).expand(1, 3, 8, 8)
    latents = vae.encode(colour).latent_dist.mean * vae.config.scaling_factor
    (preview,) = preview_images(latents, factors)
    recovered = preview.reshape(-1, 3).mean(axis=0) / 127.5 - 1
    assert np.abs(recovered - [0.6, -0.4, 0.2]).max() < 1 / 100


def test_the_ledger_lives_in_dev_shm_and_an_unwritable_place_means_no_ledger(tmp_path):
    """The Helm chart's Triton pods have a read-only root file system and a writable /dev/shm."""
    from pathlib import Path

    from triton_inpaint.pipelines.batching import ledger_path, open_ledger

    path = ledger_path("tiny", server=1234)
    import os
    import tempfile

    shm = Path("/dev/shm")
    assert path.parent == (shm if os.access(shm, os.W_OK) else Path(tempfile.gettempdir()))
    assert path == ledger_path("tiny", server=1234) != ledger_path("x", server=1234)
    assert path != ledger_path("tiny", server=1235) != ledger_path("tiny", "cuda:0", server=1235)
    warnings: list[str] = []
    assert open_ledger(tmp_path / "missing" / "budget.json", warnings.append) is None
    assert "not shared with the streaming twin" in warnings[0]
    assert open_ledger(tmp_path / "budget.json", warnings.append) is not None
