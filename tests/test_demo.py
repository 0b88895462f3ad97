"""The README's main job, as a newcomer runs it: Triton and the gateway started, one request, all stopped."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import decode_rgb
from triton_inpaint.demo import sample_bytes
from triton_inpaint.imaging import decode_mask

pytestmark = pytest.mark.server


def test_demo_inpaints_the_sample_through_the_gateway(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "demo", "--workdir", str(tmp_path), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[5/5] inpainting the bundled sample through the gateway" in done.stdout
    result = decode_rgb((tmp_path / "result.png").read_bytes())
    sample = decode_rgb(sample_bytes("sample.png"))
    keep = decode_mask(sample_bytes("sample_mask.png")) == 0
    assert result.shape == sample.shape and np.array_equal(result[keep], sample[keep])
    assert not np.array_equal(result[~keep], sample[~keep])
