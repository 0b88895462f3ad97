"""A request through ``inpaint_<NAME>_stream``: progress (and previews) as the steps run, then the
result, over one gRPC stream (Triton answers decoupled models only on streams).

tritonclient's stream API is callback-based and allows one stream per client object; this wraps it as
one blocking call that hands each progress response to a callback and returns the result.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    """Denoising steps taken of ``total``, and with previews a small JPEG of each image so far."""

    step: int
    total: int
    previews: list[bytes] = field(default_factory=list)


def progress_of(result: Any) -> Progress:
    step, total = (int(v) for v in result.as_numpy("output_progress").reshape(-1))
    previews = result.as_numpy("output_preview")
    return Progress(step, total, [bytes(p) for p in ([] if previews is None else previews.reshape(-1))])


def stream_infer(
    client: Any,
    model_name: str,
    inputs: list[Any],
    outputs: list[Any],
    on_progress: Callable[[Progress], None],
    timeout: float,
) -> Any:
    """The result of one streamed request; each progress response before it goes to ``on_progress``
    (on this thread). Errors are raised as tritonclient's ``InferenceServerException``."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=timeout)
    try:
        client.async_stream_infer(model_name, inputs, outputs=outputs, enable_empty_final_response=True)
        result = None
        while True:
            answer, error = answers.get(timeout=timeout)
            if error is not None:
                raise error
            final = answer.get_response().parameters.get("triton_final_response")
            if answer.as_numpy("output_progress") is not None:
                progress = progress_of(answer)
                if progress.step < progress.total:
                    on_progress(progress)
                else:
                    result = answer
            if final is not None and final.bool_param:
                break
        if result is None:
            raise RuntimeError(f"{model_name}: the stream ended without a result")
        return result
    finally:
        client.stop_stream()
