"""Reading request tensors and answering errors, shared by every Python-backend model.

Only importable inside the Triton Python backend stub (``triton_python_backend_utils``).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.contract import STAGE_TENSORS
from triton_inpaint.api.errors import InvalidInputError, ModelCallError
from triton_inpaint.api.schema import Control


def tensor(request: Any, name: str, required: bool = False) -> np.ndarray | None:
    found = pb_utils.get_input_tensor_by_name(request, name)
    if found is None:
        if required:
            raise InvalidInputError(name, "is required")
        return None
    return found.as_numpy()


def single(request: Any, name: str, required: bool = False) -> Any:
    """The one element of a shape-[1] input, or None when the optional input is absent."""
    array = tensor(request, name, required)
    if array is None:
        return None
    if array.size != 1:
        raise InvalidInputError(name, f"must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def text(request: Any, name: str, required: bool = False) -> str | None:
    value = single(request, name, required)
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(name, "is not valid UTF-8 text") from None
    return str(value)


def raw_bytes(request: Any, name: str, required: bool = False) -> bytes | None:
    value = single(request, name, required)
    return None if value is None else bytes(value)


def number(request: Any, name: str) -> Any:
    """A numeric scalar as a Python number.

    FP32 inputs become the shortest decimal that round-trips in float32 (what the caller typed):
    0.7 arrives as 0.699999988, and int(10 * 0.699999988) would run 6 steps where diffusers runs 7.
    """
    value = single(request, name)
    if value is None:
        return None
    if isinstance(value, np.floating) and value.dtype == np.float32:
        return float(str(value))
    return value.item()


def read_controls(request: Any, controls: Iterable[Control]) -> dict[str, Any]:
    """The request's values of ``controls``, each read as its declared kind (None when absent);
    checking them is the library's job (``Control.check``)."""
    values = {}
    for control in controls:
        if control.kind is bytes:
            values[control.name] = raw_bytes(request, control.name)
        elif control.kind is str:
            values[control.name] = text(request, control.name)
        else:
            values[control.name] = number(request, control.name)
    return values


def config_parameter(config: dict[str, Any], name: str, default: int) -> int:
    """An integer from the ``parameters`` of a model's config (JSON, as ``initialize`` gets it)."""
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{config.get('name', 'model')}: parameter {name} is {value!r} in config.pbtxt; use an integer"
        ) from None


def complete_config(config: Any, stage: str) -> Any:
    """Triton's auto-complete hook for a built-in step: its inputs and outputs come from the tensor
    contract (and so from the schema), never from a hand-written list in ``config.pbtxt``."""
    inputs, outputs = STAGE_TENSORS[stage]
    for spec in inputs:
        entry = {"name": spec.name, "data_type": spec.data_type, "dims": list(spec.dims)}
        config.add_input({**entry, "optional": spec.optional})
    for spec in outputs:
        config.add_output({"name": spec.name, "data_type": spec.data_type, "dims": list(spec.dims)})
    return config


def _error(message: str, invalid_argument: bool) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid_argument else "INTERNAL", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def error_response(exc: BaseException, request: Any, logger: Any) -> Any:
    """The response for a request that failed with ``exc``: the message of a refused input as it is
    (INVALID_ARG), anything else logged with its traceback and answered as an internal error."""
    if isinstance(exc, InvalidInputError):
        return pb_utils.InferenceResponse(error=_error(str(exc), invalid_argument=True))
    trace = "".join(traceback.format_exception(exc))
    logger.log_error(f"request {request.request_id()!r} failed: {trace}")
    return pb_utils.InferenceResponse(error=_error(f"internal error: {exc}", invalid_argument=False))


def respond_each(requests: list[Any], handle: Callable[[Any], list[Any]], logger: Any) -> list[Any]:
    """Answer each request on its own: one bad request gets its error, the others their results."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the batch
            responses.append(error_response(exc, request, logger))
    return responses


def send_final(request: Any, response: Any) -> None:
    """Answer ``request`` later, from any thread (the model's ``execute`` returned None for it)."""
    request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def network_signature(config: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """A network model's (input names, output names, whether it batches) from its config; graphs with
    a fixed batch of 1 (``max_batch_size`` 0, e.g. the detectors) run one request at a time."""
    inputs = [entry["name"] for entry in config["input"]]
    outputs = [entry["name"] for entry in config["output"]]
    return inputs, outputs, config.get("max_batch_size", 0) > 0


def execute_batched(
    requests: list[Any],
    input_names: list[str],
    output_names: list[str],
    batches: bool,
    read: Callable[[Any, str], Any],
    run: Callable[[dict[str, Any], list[str]], list[Any]],
    concat: Callable[[list[Any]], Any],
    output: Callable[[str, Any], Any],
) -> list[Any]:
    """Answer a network model's requests: those whose inputs agree apart from the batch axis (the
    dynamic batcher's groups) are concatenated and run as one call, then split back per request.

    ``read`` takes a request's input, ``run`` runs a batch by input names for the output names asked
    (the outputs some request of the group asked for: a UNet's DeepCache features are computed and
    copied only when a request reads them), ``concat`` joins arrays along the batch axis and ``output``
    makes a response tensor: numpy for onnxruntime, torch over DLPack for the torch runtime. Graphs with
    a fixed batch of 1 (``batches`` False) run one request at a time.
    """
    feeds = [{name: read(request, name) for name in input_names} for request in requests]
    asked = [_requested(request, output_names) for request in requests]
    groups: dict[tuple, list[int]] = {}
    for index, feed in enumerate(feeds):
        key = tuple(tuple(feed[name].shape[1:]) for name in input_names) if batches else (index,)
        groups.setdefault(key, []).append(index)
    responses: list[Any] = [None] * len(requests)
    for indices in groups.values():
        try:
            batch = {name: concat([feeds[i][name] for i in indices]) for name in input_names}
            names = [name for name in output_names if any(name in asked[i] for i in indices)]
            outputs = dict(zip(names, run(batch, names), strict=True))
            start = 0
            for i in indices:
                size = feeds[i][input_names[0]].shape[0]
                tensors = [output(name, outputs[name][start : start + size]) for name in asked[i]]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        except Exception as exc:  # noqa: BLE001 - answer the group, keep serving
            for i in indices:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
    return responses


def _requested(request: Any, output_names: list[str]) -> list[str]:
    """The outputs a request asked for, in the model's order (all of them when it named none)."""
    named = set(request.requested_output_names() or ())
    return [name for name in output_names if name in named] or list(output_names)


def bls_run(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Run another served model from inside a Python model (Triton's BLS); the runner every library
    pipeline takes, so the same code runs here and, in tests, over onnxruntime."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
    )
    response = request.exec()
    if response.has_error():
        raise ModelCallError(model, response.error().message())
    return [pb_utils.get_output_tensor_by_name(response, output).as_numpy() for output in outputs]


def model_ready(model: str) -> bool:
    """Whether ``model`` is loaded and ready, for models a request may use only when served."""
    return bool(pb_utils.is_model_ready(model_name=model))
