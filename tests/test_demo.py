"""The README's main job, as a newcomer runs it: Triton and the gateway started, one request, all stopped."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import decode_rgb
from triton_inpaint.api.imaging import decode_mask
from triton_inpaint.tools.demo import sample_bytes

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


def test_demo_serve_prints_the_page_and_serves_until_interrupted(tmp_path, detector_repository):
    import json
    import os
    import re
    import shutil
    import signal
    import urllib.request

    detectors, _ = detector_repository
    cache = tmp_path / "detectors" / "cache"
    cache.mkdir(parents=True)
    for wheel in (detectors.parent / "cache").glob("mediapipe-*.whl"):  # the suite's copy: no download
        shutil.copy(wheel, cache)
    command = [sys.executable, "-m", "triton_inpaint.cli", "demo", "--serve", "--workdir", str(tmp_path)]
    demo = subprocess.Popen(
        [*command, "--steps", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("web page: "):
                break
        page = re.match(r"web page: (\S+)", lines[-1])
        assert page, "".join(lines)
        with urllib.request.urlopen(page[1], timeout=30) as answer:
            assert answer.status == 200 and b"<title>triton-inpaint</title>" in answer.read()
        with urllib.request.urlopen(page[1] + "v1/models", timeout=30) as answer:
            catalog = json.load(answer)
        assert [m["name"] for m in catalog["models"]] == ["tiny"] and catalog["masking"]["served"]
        pids = [int(pid) for pid in re.findall(r"ready: pid (\d+)", "".join(lines))]
        assert len(pids) == 2  # tritonserver and the gateway
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, demo.stdout.read()
    finally:
        demo.kill()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"process {pid} outlived the demo")
