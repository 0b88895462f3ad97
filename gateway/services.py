"""Everything the routes use, built once per app and kept on ``app.state.services``: the config, the
stores, the task code of both styles, the async worker, the key limits and the metrics.

Routes take what they need through :func:`services` (a FastAPI dependency), so a router can be mounted
on an app of its own, with services of its choosing, and tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from triton_inpaint.gateway.access.limits import KeyLimits, Limits
from triton_inpaint.gateway.config import GatewayConfig
from triton_inpaint.gateway.eden.protocol import EDEN_TOOL
from triton_inpaint.gateway.eden.tasks import EdenTasks
from triton_inpaint.gateway.inference import TaskRunner
from triton_inpaint.gateway.runware.async_tasks import RUNWARE_TOOL, RunwareAsync
from triton_inpaint.gateway.runware.dispatch import RunwareDispatch, TaskMetrics
from triton_inpaint.gateway.runware.handlers import RunwareTasks
from triton_inpaint.gateway.store.storage import GatewayStorage, open_storage
from triton_inpaint.gateway.worker import TaskWorker


@dataclass
class Services:
    config: GatewayConfig
    storage: GatewayStorage
    runner: TaskRunner
    runware: RunwareDispatch
    eden: EdenTasks
    worker: TaskWorker
    limits: Limits
    metrics: TaskMetrics

    def base_url(self, request: HTTPConnection) -> str:
        """Where result URLs point: ``--public-url``, else the request's own host when it is one the
        gateway trusts (``--trusted-host``), else the address it listens on: never a Host header an
        arbitrary caller chose. A WebSocket's results are fetched over HTTP(S)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = request.headers.get("host", "").lower()
        if host in self.config.trusted_host_names():
            scheme = {"ws": "http", "wss": "https"}.get(request.url.scheme, request.url.scheme)
            return f"{scheme}://{host}"
        return self.config.listen_url.rstrip("/")

    def close(self) -> None:
        self.limits.close()
        self.storage.tasks.close()


def build_services(config: GatewayConfig, storage: GatewayStorage | None = None) -> Services:
    """Wire the gateway's parts: the worker gets each task style's handler, never the other way round."""
    if storage is None:
        storage = open_storage(config.data_dir, config.s3, config.database_url)
    runner = TaskRunner(config, storage)
    handlers = RunwareTasks(runner)
    worker = TaskWorker(config, storage, handlers={})
    runware_async = RunwareAsync(handlers, worker.wake)
    eden = EdenTasks(runner, worker.wake)
    worker.handlers.update({RUNWARE_TOOL: runware_async.run_stored, EDEN_TOOL: eden.inpaint})
    worker.failures[RUNWARE_TOOL] = runware_async.failure
    limits: Limits
    if storage.tasks.shared:  # replicas share the store: limits count there too
        from triton_inpaint.gateway.store.postgres import SharedKeyLimits  # psycopg: only when it is used

        limits = SharedKeyLimits(storage.tasks, config.concurrency_per_key, config.requests_per_minute)
    else:
        limits = KeyLimits(config.concurrency_per_key, config.requests_per_minute)
    metrics = TaskMetrics()
    runware = RunwareDispatch(handlers, runware_async, metrics)
    return Services(config, storage, runner, runware, eden, worker, limits, metrics)


def services(request: HTTPConnection) -> Services:
    """The app's services, for a route (``Annotated[Services, Depends(services)]``)."""
    return request.app.state.services
