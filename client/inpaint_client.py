"""A thin client over tritonclient for the ``inpaint_<NAME>`` ensembles, over gRPC or HTTP."""

from __future__ import annotations

import contextlib
import json
import queue
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from triton_inpaint.api.contract import (
    MASKING_INPUTS,
    MASKING_MODEL,
    MASKING_OUTPUTS,
    REQUEST_INPUTS,
    RESPONSE_OUTPUTS,
    STREAM_INPUTS,
    STREAM_OUTPUTS,
    STREAM_SUFFIX,
    ensemble_name,
)
from triton_inpaint.api.errors import split_field
from triton_inpaint.api.lora import lora_text
from triton_inpaint.api.schema import INPAINT, MASK, with_controls
from triton_inpaint.client.streaming import Progress, stream_infer

PROTOCOLS = ("grpc", "http")
_SPECS = {spec.name: spec for spec in (*REQUEST_INPUTS, *MASKING_INPUTS, *STREAM_INPUTS)}


class InpaintError(RuntimeError):
    """The server refused or failed the request; the message is the server's, naming the input.

    ``field`` and ``reason`` are the message's two parts when it names an input, else None.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.field, self.reason = split_field(message) or (None, None)


class ServerUnreachableError(InpaintError):
    """No Triton answered at the URL (refused, timed out, or not serving)."""


class DeadlineExceededError(InpaintError):
    """The request took longer than the caller's timeout. Not a server fault: a larger or longer
    request, or a busy server; wait longer, or (through the gateway) send it as an async task."""


class ModelNotServedError(InpaintError):
    """The server has no model by the name or id asked for; the message lists those it has."""


NOT_SERVED = "is not served"  # in every ModelNotServedError's message, over Triton and the gateway alike


class ModelUnavailableError(InpaintError):
    """A model the request needs has lost its process or is (re)loading; the server's supervisor is
    bringing it back, so the same request succeeds again in a few seconds."""


# Inference calls that fail before the server answered (a pod that died, a connection the server
# closed) are sent again, to another address when the target has several: inpainting a given seed is
# deterministic, so a repeat is harmless. gRPC retries only what it still holds whole, hence the buffer.
_RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_RETRY_BUFFER_BYTES = 256 * 1024 * 1024
LIVENESS_TIMEOUT_S = 3.0
_MIN_RESOLVE_INTERVAL_MS = 5000


def grpc_channel_args() -> list[tuple[str, Any]]:
    """The gRPC channel options of every client of ours: tritonclient's defaults, plus requests spread
    one by one over every address the target resolves to (``round_robin``; gRPC's default,
    ``pick_first``, sends everything down the first connection, so the pods behind a name that resolves
    to several, e.g. a headless Service, would sit idle) and the retry policy above. The name is
    resolved again whenever a connection closes, which the servers cause every
    ``--grpc-max-connection-age``, so pods that come and go are followed."""
    import tritonclient.grpc as grpcclient

    keepalive = grpcclient.KeepAliveOptions()
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService", "method": "ModelInfer"}],
                "retryPolicy": _RETRY_POLICY,
            }
        ],
    }
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.service_config_disable_resolution", 1),  # never a config from DNS TXT records
        # gRPC resolves a name again at most this often (default 30 s): a pod added is found within
        # this or the servers' connection age, whichever is longer.
        ("grpc.dns_min_time_between_resolutions_ms", _MIN_RESOLVE_INTERVAL_MS),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", _RETRY_BUFFER_BYTES),
    ]


# What Triton says while a model is dead or being reloaded (see triton_inpaint.server.supervisor).
_UNAVAILABLE = re.compile(r"Stub process '[^']+' is not healthy|is not ready|is not available")
# Triton's answer to an input the model does not declare: a control newer than the model's export.
_UNDECLARED = re.compile(r"unexpected inference input '(\w+)' for model '([^']+)'")


@dataclass(frozen=True)
class ModelInfo:
    """A served inpainting model as its ensemble's config describes it."""

    name: str  # use this, or the id, as ``model`` in inpaint()
    id: str
    family: str
    native_resolution: int
    default_steps: int
    default_guidance: float
    default_scheduler: str | None
    default_strength: float = 0.8
    aliases: tuple[str, ...] = ()  # other ids the registry gave it (e.g. a hosted API's model id)
    adapters: tuple[str, ...] = ()  # the LoRA adapters requests may apply (``lora``)
    progress: bool = False  # its streaming twin is loaded: inpaint(on_progress=...) works
    # Step caching it serves: DeepCache's branches (UNet models; deep_cache_branch_id is one of them) and
    # the first-block cache (FLUX, fbcache). Empty/False: exported before step caching, or without.
    deep_cache_branches: tuple[int, ...] = ()
    first_block_cache: bool = False


@dataclass(frozen=True)
class MaskResult:
    """The mask (PNG, white = selected) and what was detected, best first."""

    mask: bytes
    detections: list[dict[str, Any]]


@dataclass(frozen=True)
class InpaintResult:
    """The encoded images, one per seed (``seeds[i]`` replays ``images[i]`` alone), and the mask they
    were inpainted through (PNG, after invert, expand and blur)."""

    images: list[bytes]
    seeds: list[int]
    mask: bytes = b""

    @property
    def image(self) -> bytes:
        return self.images[0]

    @property
    def seed(self) -> int:
        return self.seeds[0]


def _clean(message: str) -> str:
    # Triton prefixes errors from ensemble steps with "in ensemble 'inpaint_x', "; the user needs the rest.
    return re.sub(r"^\[StatusCode\.\w+\]\s*", "", re.sub(r"in ensemble '[^']+', ", "", message)).strip()


class InpaintClient:
    """Send inpainting requests to a Triton server.

    ``url`` is ``HOST:PORT`` of Triton's gRPC port (default protocol) or HTTP port. Over gRPC it may be
    any gRPC target (``dns:///NAME:PORT``, ``ipv4:A:PORT,B:PORT``); requests are spread over every
    address it resolves to (see :func:`grpc_channel_args`). HTTP connects to one address.
    """

    def __init__(self, url: str, protocol: str = "grpc", timeout: float = 600.0) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        self._names_by_id: dict[str, str] = {}
        self._client = (
            module.InferenceServerClient(url=url, network_timeout=timeout)
            if protocol == "http"
            else module.InferenceServerClient(url=url, channel_args=grpc_channel_args())
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> InpaintClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_models(self) -> list[ModelInfo]:
        """Every ready inpainting model with its id, family, native resolution and defaults."""
        with self._answers():
            return self._list_models()

    def _list_models(self) -> list[ModelInfo]:
        models = []
        loaded = self._loaded()
        for name in _inpainting_models(loaded):
            if self.protocol == "grpc":
                config = self._client.get_model_config(ensemble_name(name), as_json=True)["config"]
            else:
                config = self._client.get_model_config(ensemble_name(name))
            # HTTP answers in snake_case; gRPC's JSON form uses camelCase and leaves empty strings out.
            params = {
                key: value.get("string_value", value.get("stringValue", ""))
                for key, value in config.get("parameters", {}).items()
            }
            models.append(
                ModelInfo(
                    name=name,
                    id=params.get("model_id", name),
                    family=params.get("family", "unknown"),
                    native_resolution=int(params.get("native_resolution", 0)),
                    default_steps=int(params.get("default_steps", 0)),
                    default_guidance=float(params.get("default_guidance", 0)),
                    default_scheduler=params.get("default_scheduler") or None,
                    default_strength=float(params.get("default_strength", 0.8)),
                    aliases=tuple(alias for alias in params.get("model_aliases", "").split(",") if alias),
                    adapters=tuple(item for item in params.get("lora_adapters", "").split(",") if item),
                    progress=ensemble_name(name) + STREAM_SUFFIX in loaded,
                    deep_cache_branches=tuple(
                        int(item) for item in params.get("deep_cache_branches", "").split(",") if item
                    ),
                    first_block_cache=params.get("first_block_cache") == "1",
                )
            )
        return models

    def resolve_model(self, model: str) -> str:
        """The Triton name for a model given by name, ensemble name or registry id."""
        if model.startswith("inpaint_"):
            return model
        if ":" not in model:
            return ensemble_name(model)
        # Ids are looked up once and remembered: listing costs a round trip per served model.
        if model not in self._names_by_id:
            self._names_by_id = {
                model_id: info.name for info in self.list_models() for model_id in (info.id, *info.aliases)
            }
        return ensemble_name(self._names_by_id.get(model, model))  # unknown: refused with the served list

    def server_ready(self) -> bool:
        """Triton's own readiness: false while any model is loading, e.g. one being restored after its
        process died (the server runs with strict readiness)."""
        return bool(self._client.is_server_ready())

    def model_ready(self, name: str) -> bool:
        """Whether Triton serves the model ``name`` (any model, e.g. ``image_masking``) and it is ready."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_model_ready(name))
        except InferenceServerException:
            return False

    def served_models(self) -> list[str]:
        """Names of the ready inpainting models (the ``NAME`` of each ``inpaint_NAME`` ensemble).

        Read from the server's statistics, which list the loaded models: the repository index is an
        admin API the server restricts (see triton_inpaint.server.process.RESTRICTED_APIS)."""
        return _inpainting_models(self._loaded())

    def _loaded(self) -> set[str]:
        """The names of every model the server has loaded."""
        with self._answers():
            if self.protocol == "grpc":
                stats = self._client.get_inference_statistics(as_json=True).get("model_stats", [])
            else:
                stats = self._client.get_inference_statistics().get("model_stats", [])
        return {entry["name"] for entry in stats}

    def _input(self, name: str, value: Any) -> Any:
        spec = _SPECS[name]
        if spec.client_dtype == "BYTES":
            array = np.array(
                [value if isinstance(value, bytes) else str(value).encode("utf-8")], dtype=np.object_
            )
        else:
            dtypes = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}
            array = np.array([value], dtype=dtypes[spec.client_dtype])
        tensor = self._module.InferInput(name, list(array.shape), spec.client_dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    @with_controls(INPAINT, skip=("image", "mask", "prompt"))
    def inpaint(
        self,
        model: str,
        image: bytes,
        mask: bytes | None,
        prompt: str,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every: int = 1,
        previews: bool = False,
        **controls: Any,
    ) -> InpaintResult:
        """Inpaint ``image`` where ``mask`` is white; an absent or ``None`` control takes its default.

        ``model`` is the checkpoint name given at export (``tiny``) or the ensemble's name
        (``inpaint_tiny``). Instead of a mask (pass ``None``), ``mask_model`` (``face``, ``hands``...)
        or ``mask_prompt`` (``"eyes"``, ``"hair"``) has the server make the mask in the same request.
        ``dry_run`` checks everything a request can be refused for without running a network (images,
        mask, sizes, the memory budget, scheduler, strength) and answers with no images.

        ``on_progress`` (gRPC only) is called with a :class:`Progress` every ``progress_every`` steps
        while the request denoises, with a small JPEG preview of each image when ``previews``; the
        result is the same as without it.
        """
        values = {"image": image, "mask": mask, "prompt": prompt, **INPAINT.keywords(controls, "inpaint")}
        values["lora"] = lora_text(values.get("lora"))  # also as (model, weight) pairs or {model, weight}
        if on_progress is None:
            result = self._infer(self.resolve_model(model), values, RESPONSE_OUTPUTS, model)
        else:
            streamed = {**values, "progress_every": progress_every, "with_previews": previews}
            result = self._stream(self.resolve_model(model), streamed, on_progress, model)
        images = [bytes(image) for image in result.as_numpy("output_image").reshape(-1)]
        seeds = [int(seed) for seed in result.as_numpy("output_seed").reshape(-1)]
        mask_used = bytes(result.as_numpy("output_mask").reshape(-1)[0])
        return InpaintResult(images=images, seeds=seeds, mask=mask_used)

    @with_controls(MASK, skip=("image", "model", "prompt"))
    def mask(
        self, image: bytes, model: str | None = None, prompt: str | None = None, **controls: Any
    ) -> MaskResult:
        """A mask from a detector (``face``, ``face_mesh``, ``eyes``, ``nose``, ``lips``, ``hands``,
        ``person``) or from a mask prompt (``"the background"``, ``"hair"``); an absent or ``None``
        control takes its default."""
        values = {"image": image, "model": model, "prompt": prompt, **MASK.keywords(controls, "mask")}
        result = self._infer(MASKING_MODEL, values, MASKING_OUTPUTS, MASKING_MODEL)
        detections = json.loads(bytes(result.as_numpy("detections").reshape(-1)[0]))
        return MaskResult(mask=bytes(result.as_numpy("mask_image").reshape(-1)[0]), detections=detections)

    def _infer(self, model_name: str, values: dict[str, Any], outputs: tuple, requested: str) -> Any:
        """One request; errors become InpaintError naming the input, or ServerUnreachableError."""
        inputs = [self._input(name, value) for name, value in values.items() if value is not None]
        wanted = [self._module.InferRequestedOutput(spec.name) for spec in outputs]
        from tritonclient.utils import InferenceServerException

        try:
            if self.protocol == "grpc":
                return self._client.infer(model_name, inputs, outputs=wanted, client_timeout=self.timeout)
            return self._client.infer(model_name, inputs, outputs=wanted)
        except InferenceServerException as exc:
            raise self._refusal(exc, model_name, requested) from None
        except OSError as exc:  # HTTP: connection refused or reset
            raise ServerUnreachableError(str(exc)) from None

    def _stream(
        self, model_name: str, values: dict[str, Any], on_progress: Callable[[Progress], None], requested: str
    ) -> Any:
        """One request through the model's stream ensemble (see :mod:`triton_inpaint.client.streaming`)."""
        if self.protocol != "grpc":
            raise ValueError("on_progress: progress is streamed over gRPC only; use protocol='grpc'")
        from tritonclient.utils import InferenceServerException

        inputs = [self._input(name, value) for name, value in values.items() if value is not None]
        wanted = [self._module.InferRequestedOutput(s.name) for s in (*RESPONSE_OUTPUTS, *STREAM_OUTPUTS)]
        stream_name = model_name + STREAM_SUFFIX
        try:
            return stream_infer(self._client, stream_name, inputs, wanted, on_progress, self.timeout)
        except InferenceServerException as exc:
            refused = self._refusal(exc, stream_name, requested)
            if isinstance(refused, ModelNotServedError) and self.model_ready(model_name):
                raise ModelNotServedError(
                    f"on_progress: model {requested!r} is served without progress: {stream_name} is not "
                    "loaded (exported with --no-stream, or left out of the server's models); call inpaint "
                    "without on_progress"
                ) from None
            raise refused from None
        except queue.Empty:
            raise DeadlineExceededError(
                f"{stream_name}: the request took longer than {self.timeout:g} s (the client's timeout)"
            ) from None

    @contextlib.contextmanager
    def _answers(self) -> Iterator[None]:
        """Calls other than inference (statistics, configs) fail as the same error types."""
        from tritonclient.utils import InferenceServerException

        try:
            yield
        except InferenceServerException as exc:
            raise self._refusal(exc, "", "") from None
        except OSError as exc:
            raise ServerUnreachableError(str(exc)) from None

    def _live(self) -> bool:
        """Whether the server answers a liveness call within a few seconds: tells a request that took too
        long from a server that hangs (both end a gRPC call past its deadline)."""
        try:
            if self.protocol == "grpc":
                return bool(self._client.is_server_live(client_timeout=LIVENESS_TIMEOUT_S))
            return bool(self._client.is_server_live())
        except Exception:  # noqa: BLE001 - any failure to answer means: not live
            return False

    def _refusal(self, exc: Exception, model_name: str, requested: str) -> InpaintError:
        """A Triton error as the error type that says what to do about it."""
        message = _clean(exc.message() or str(exc))
        if "DEADLINE_EXCEEDED" in str(exc.status()) and not self._live():
            return ServerUnreachableError(message)  # a server that does not answer at all, not a long request
        if "DEADLINE_EXCEEDED" in str(exc.status()):
            return DeadlineExceededError(
                f"the request took longer than {self.timeout:g} s (the client's timeout); give it more time "
                "(InpaintClient(timeout=...)), or ask for less work (fewer steps or images, a smaller size)"
            )
        if "UNAVAILABLE" in str(exc.status()):
            return ServerUnreachableError(message)
        if _UNAVAILABLE.search(message):
            return ModelUnavailableError(f"{message} (the model is being restored; retry in a few seconds)")
        undeclared = _UNDECLARED.search(message)
        if undeclared and undeclared[1] in INPAINT.names:
            field = undeclared[1]
            return InpaintError(
                f"{field}: model {requested!r} was exported before this control existed ({undeclared[2]} "
                f"has no {field} input); export it again with this version (triton-inpaint export onnx or "
                f"registry) to use it, or leave {field} out: everything else it serves as before"
            )
        if "unknown model" in message.lower() and model_name:
            if model_name == MASKING_MODEL:
                return ModelNotServedError(
                    f"{MASKING_MODEL} {NOT_SERVED}; export it with 'triton-inpaint export detectors'"
                )
            served = ", ".join(f"{m.id} ({m.name})" for m in self.list_models()) or "none"
            return ModelNotServedError(f"model: {requested!r} {NOT_SERVED}; served models: {served}")
        return InpaintError(message)


def _inpainting_models(loaded: set[str]) -> list[str]:
    """The ``NAME`` of each loaded ``inpaint_NAME`` ensemble (not the pre/postprocess steps nor a
    model's streaming twin)."""
    prefix = "inpaint_"
    return sorted(
        name[len(prefix) :]
        for name in loaded
        if name.startswith(prefix)
        and name not in ("inpaint_preprocess", "inpaint_postprocess")
        and not name.endswith(STREAM_SUFFIX)
    )
