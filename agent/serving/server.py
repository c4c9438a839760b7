"""The built-in model server process: the model manager, its config and version
watchers, the REST API and the gRPC API, started and stopped together."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

import agent.log
from agent.ports import SERVING_GRPC_PORT, SERVING_REST_PORT
from agent.serving.batching import BatchingOptions, BatchingServable, batch_graphs
from agent.serving.canary import TrafficError, read_traffic
from agent.serving.config import ConfigError, ModelConfig, VersionPolicy, confine, parse_models_config
from agent.serving import limits, tracing
from agent.serving.grpc_api import add_admin_services, add_services, channel_options
from agent.serving.loader import load_servable
from agent.serving.manager import ModelManager
from agent.serving.metrics import ServingMetrics
from agent.serving.request_log import RequestLog
from agent.serving.oip_grpc import add_service as add_oip_service
from agent.serving.rest import RestApi
from agent.serving.runtime import RuntimeOptions
from agent.serving.servable import Servable
from agent.serving.warmup import warm_up

log = agent.log.get(__name__)


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServerOptions:
    """What `inference-agent serve` was asked for (TF Serving's flags)."""

    host: str = "0.0.0.0"
    grpc_port: int = SERVING_GRPC_PORT
    rest_port: int = SERVING_REST_PORT
    models_config: Path | None = None
    # The canary split per model (agent/serving/canary.py), reread with models_config.
    traffic_file: Path | None = None
    config_poll_seconds: float = 0
    fs_poll_seconds: float = 1
    threads: int = 0  # intra-op threads per inference; 0 = the CPU count
    model_name: str = "default"
    model_base_path: Path | None = None
    runtime: str = "auto"  # auto | openvino | onnxruntime
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile_cache_dir: Path | None = None
    batching: BatchingOptions = BatchingOptions()
    max_request_bytes: int = limits.MAX_REST_BODY_BYTES  # REST body and gRPC message
    max_concurrent_requests: int = limits.MAX_CONCURRENT_REQUESTS
    # Admin calls (HandleReloadConfigRequest) are served only on this unix socket (mode
    # 0600); the network ports refuse them.
    admin_socket: Path | None = None
    # Every base_path a config names must lie under this directory, when given.
    models_root: Path | None = None
    # OTLP/gRPC collector (host:port) for the server's spans; "" = no tracing.
    otlp_endpoint: str = ""
    # Sampled request log: the file (None = off), the share of requests, the bytes kept of each.
    request_log_file: Path | None = None
    request_log_sample_rate: float = 0.0
    request_log_max_bytes: int = 4096


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ModelServer:
    """One running server; `start` loads the configured models, then opens both ports."""

    def __init__(self, options: ServerOptions):
        self.options = options
        threads = options.threads or cpu_count()
        self._threads = threads
        self._runtime = RuntimeOptions(options.runtime, options.precision, threads, options.compile_cache_dir)
        # Inference: request parsing and runs overlap; with batching most workers wait
        # for their batch, so there are enough of them to fill one.
        workers = max(4, threads, 2 * options.batching.max_batch_size if options.batching.enabled else 0)
        self._inference = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._loading = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loading")
        self.manager = ModelManager(self._load, self._loading)
        self.request_log = (RequestLog(options.request_log_file, options.request_log_sample_rate,
                                       options.request_log_max_bytes)
                            if options.request_log_file is not None and options.request_log_sample_rate > 0 else None)
        self.metrics = ServingMetrics(self.manager.configured, self.request_log)
        # One cap over both APIs: past it a request gets 503 / UNAVAILABLE at once.
        self._admission = limits.Admission(options.max_concurrent_requests)
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._config_text: str | None = None
        # One config change at a time (the file poll, an admin reload), each in the
        # order its config was read: a poll that read the old file cannot undo a reload.
        self._config_lock = asyncio.Lock()
        self._traffic_error = ""

    def _load(self, name: str, version: int, path: Path) -> Servable:
        """Load, warm up and (where its signatures allow a batch dimension) batch one version."""
        started = time.perf_counter()
        try:
            servable = load_servable(name, version, path, self._runtime)
        except BaseException:
            self.metrics.record_load(str(path), False, time.perf_counter() - started)
            raise
        loaded = time.perf_counter()
        batching = self.options.batching
        batched = batching.enabled and bool(batch_graphs(servable))
        sizes = (1, batching.max_batch_size) if batched else (1,)
        try:
            done = warm_up(servable, sizes)
        except BaseException:
            servable.close()
            self.metrics.record_load(str(path), False, time.perf_counter() - started)
            raise
        self.metrics.record_warmup(str(path), time.perf_counter() - loaded)
        self.metrics.record_load(str(path), True, time.perf_counter() - started)
        log.info("model version warmed up", model=name, version=version, runtime=servable.runtime,
                 precision=servable.precision, batching=batched, warmup=done)
        if batched:
            return BatchingServable(servable, batching, self.metrics)
        servable.run = tracing.traced_run(servable.run)  # a `run` span per call when tracing is on
        return servable

    async def start(self) -> None:
        """Load the configured models, then listen on the REST and gRPC ports.

        As tensorflow_model_server does, the ports open only after the initial load: a
        restarted server refuses connections (which Envoy retries elsewhere) instead of
        answering requests for models it has not loaded yet."""
        o = self.options
        tracing.setup(o.otlp_endpoint)
        await self._initial_load()
        if o.rest_port:  # 0 disables REST, as in tensorflow_model_server
            rest = RestApi(self.manager, self._inference, self._admission, o.max_request_bytes, self.metrics)
            self._runner = web.AppRunner(rest.app(), access_log=None, shutdown_timeout=5)
            await self._runner.setup()
            await web.TCPSite(self._runner, o.host, o.rest_port, reuse_address=True).start()
        self._grpc = grpc.aio.server(options=channel_options(o.max_request_bytes),
                                     maximum_concurrent_rpcs=limits.MAX_GRPC_RPCS)
        add_services(self._grpc, self.manager, self._inference, self._admission, self.metrics)
        add_oip_service(self._grpc, self.manager, self._inference, self._admission, self.metrics)
        if self._grpc.add_insecure_port(_address(o.host, o.grpc_port)) == 0:
            raise OSError(f"cannot listen on gRPC address {_address(o.host, o.grpc_port)}")
        await self._grpc.start()
        if o.admin_socket is not None:
            await self._start_admin(o.admin_socket)
        log.info("model server listening", host=o.host, grpc_port=o.grpc_port, rest_port=o.rest_port,
                 threads=self._threads, admin_socket=str(o.admin_socket) if o.admin_socket else None)
        if o.models_config is not None and o.config_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="watch-config"))
        if o.fs_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self._watch_versions(), name="watch-versions"))

    async def _start_admin(self, path: Path) -> None:
        """The admin channel: ModelService with HandleReloadConfigRequest on a unix
        socket that only this user can open (created 0600 from its first instant)."""
        path.unlink(missing_ok=True)
        self._admin = grpc.aio.server(options=channel_options())
        add_admin_services(self._admin, self.manager, self._inference, self.reload)
        old = os.umask(0o177)
        try:
            if self._admin.add_insecure_port(f"unix:{path}") == 0:
                raise OSError(f"cannot listen on the admin socket {path}")
            await self._admin.start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def _confined(self, configs: list[ModelConfig], where: str) -> list[ModelConfig]:
        if self.options.models_root is not None:
            confine(configs, self.options.models_root, where)
        return configs

    async def reload(self, configs: list[ModelConfig]) -> None:
        """Serve exactly `configs` now (the admin reload); ConfigError for a base_path
        outside the models root, and nothing changes."""
        self._confined(configs, "ReloadConfigRequest")
        async with self._config_lock:
            await self.manager.apply(configs)
        await self._read_traffic()

    async def _read_traffic(self) -> None:
        """Take the traffic file's canary percentages; a bad file keeps those in force."""
        path = self.options.traffic_file
        if path is None:
            return
        try:
            self.manager.canary.set(await asyncio.to_thread(read_traffic, path))
        except TrafficError as e:
            if str(e) != self._traffic_error:
                log.error("traffic file rejected, keeping the canary split in force", error=str(e))
            self._traffic_error = str(e)
        else:
            self._traffic_error = ""

    async def _read_config(self) -> list[ModelConfig] | None:
        """The config file's models if its text changed and parses; None otherwise."""
        path = self.options.models_config
        assert path is not None
        try:
            text = await asyncio.to_thread(path.read_text)
        except OSError as e:
            if self._config_text != "":
                log.error("cannot read models config", path=str(path), error=e.strerror or str(e))
            self._config_text = ""
            return None
        if text == self._config_text:
            return None
        self._config_text = text
        try:
            return self._confined(parse_models_config(text, str(path)), str(path))
        except ConfigError as e:
            log.error("models config rejected, keeping the models in force", error=str(e))
            return None

    async def _initial_load(self) -> None:
        o = self.options
        if o.models_config is not None:
            configs = await self._read_config()
        elif o.model_base_path is not None:
            configs = [ModelConfig(o.model_name, o.model_base_path.absolute(), "tensorflow", VersionPolicy())]
        else:
            configs = []
        if configs is not None:
            async with self._config_lock:
                await self.manager.apply(configs)
        await self._read_traffic()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.options.config_poll_seconds)
            try:
                await self._read_traffic()
                async with self._config_lock:
                    configs = await self._read_config()
                    if configs is not None:
                        await self.manager.apply(configs)
            except Exception:
                log.exception("models config reload failed")

    async def _watch_versions(self) -> None:
        while True:
            await asyncio.sleep(self.options.fs_poll_seconds)
            try:
                await self.manager.reconcile()
            except Exception:
                log.exception("version scan failed")

    async def stop(self) -> None:
        """Stop accepting requests, let in-flight ones finish briefly, unload everything."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._admin is not None:
            await self._admin.stop(grace=1)
            if self.options.admin_socket is not None:
                self.options.admin_socket.unlink(missing_ok=True)
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.manager.close()
        self._inference.shutdown(wait=False, cancel_futures=True)
        self._loading.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(tracing.shutdown)  # the spans still queued are sent
        if self.request_log is not None:
            await asyncio.to_thread(self.request_log.close)
        log.info("model server stopped")
