"""The FastAPI app of `personalign serve`: OpenAI's chat API over the engine, errors in OpenAI's error JSON.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (n, stop, seed, stream as server-sent events, vLLM's
`prompt_logprobs`), `POST /tokenize` (vLLM's), `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter` (vLLM's
request shape, only for folders under `adapter_root`), `GET /health`. Every route but /health needs the API key
when one is set.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from personalign.config import SamplingConfig
from personalign.errors import PersonalignError
from personalign.methods.spec import parse_spec, resolve_personalizer
from personalign.profiles import load_profile
from personalign.serve.config import LOOPBACK, ServeConfig
from personalign.serve.engine import BackendPool, Completion, Engine, Job, Overloaded, Served, rendered_ids
from personalign.serve.schema import ChatCompletionRequest, LoadAdapterRequest, TokenizeRequest, UnloadAdapterRequest


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---- loading ----------------------------------------------------------------------------------------
def check_bind(host: str, api_key: str | None) -> None:
    if host not in LOOPBACK and not api_key:
        raise PersonalignError(f"--host {host}: binding beyond loopback needs --api-key KEY (clients send it as "
                               "`Authorization: Bearer KEY`); or keep the default 127.0.0.1")


def base_model_id(model: str) -> str:
    """The API name of the base model: 'default', a hub id as given, or a local folder's name."""
    return Path(model).name if Path(model).exists() else model


def build_engine(config: ServeConfig) -> Engine:
    """Check every spec (no model loaded yet), then load the base model, the methods and the runs."""
    from personalign.methods.base import method_class

    check_bind(config.host, config.api_key)
    if config.methods and not config.profile:
        raise PersonalignError("--methods needs --profile FILE (the methods are applied to that profile)")
    for method in config.methods:
        if method_class(method).trainable:
            raise PersonalignError(f"--methods {method}: a trained method is served from its run dir; train it "
                                   "with `personalign personalize` and pass --runs DIR")
    specs = [parse_spec(run) for run in config.runs]
    profile = load_profile(config.profile) if config.profile else None
    pool = BackendPool(batch_size=config.max_batch)
    engine = Engine(pool, config.max_batch, config.batch_window_ms, config.max_queue, config.max_wait_ms)
    base = resolve_personalizer("base", model=config.model, backend_factory=pool)
    engine.add(Served(base_model_id(config.model.model), base, "base"))
    stem = Path(config.profile).stem if config.profile else ""
    for method in config.methods:
        personalizer = resolve_personalizer(method, profile=profile, model=config.model, backend=base.backend,
                                            method_config=config.method_configs.get(method))
        engine.add(Served(f"{stem}-{method}", personalizer, method))
    for spec in specs:
        engine.add(Served(spec.label, resolve_personalizer(spec, profile=profile, model=config.model,
                                                           backend_factory=pool), spec.text))
    return engine


def hot_load(engine: Engine, config: ServeConfig, name: str, path: str) -> None:
    """Load a run dir or a LoRA adapter folder under `adapter_root` as model `name` (runs on the worker)."""
    from personalign.methods.base_model import BaseModelMethod

    if not config.adapter_root:
        raise ApiError(403, "hot-loading is off; start the server with --adapter-root DIR", "permission_error")
    root = Path(config.adapter_root).resolve()
    target = (root / path).resolve()  # an absolute `path` replaces root here; the check below still applies
    if not target.is_relative_to(root):
        raise ApiError(403, f"lora_path {path!r} is outside the adapter root", "permission_error", "lora_path")
    if name in engine.models:
        raise ApiError(400, f"a model named {name!r} is already loaded", param="lora_name")
    if (target / "method.json").is_file():
        personalizer = resolve_personalizer(str(target), model=config.model, backend_factory=engine.pool)
    elif (target / "adapter_config.json").is_file():
        personalizer = BaseModelMethod(engine.pool(config.model.model_copy(update={"adapter": str(target)})))
    else:
        raise ApiError(404, f"lora_path {path!r}: no run dir (method.json) or adapter (adapter_config.json) there",
                       param="lora_path", code="not_found")
    engine.add(Served(name, personalizer, str(target)))


# ---- the app ----------------------------------------------------------------------------------------
def create_app(engine: Engine, config: ServeConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.close, config.shutdown_timeout_s)  # finish what is queued

    app = FastAPI(title="personalign", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        message = f"{where}: {first['msg']}" + (" (unknown field)" if first["type"] == "extra_forbidden" else "")
        return ApiError(400, message, param=where).response()

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key; send `Authorization: Bearer KEY`",
                           "authentication_error", code="invalid_api_key")

    def served(name: str) -> Served:
        if name not in engine.models:
            raise ApiError(404, f"model {name!r} does not exist; GET /v1/models lists the served ones",
                           param="model", code="model_not_found")
        return engine.models[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(engine.models), "pending": engine.pending, "rejected": engine.rejected}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        created = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "personalign", "source": s.source}
            for name, s in engine.models.items()
        ]}

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        model = served(body.model)
        messages = await asyncio.to_thread(_conversation, model, body.messages)
        ids = rendered_ids(model.backend.slot.backend, messages, body.add_generation_prompt,
                           body.continue_final_message)
        return {"count": len(ids), "tokens": ids, "max_model_len": None}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(body: ChatCompletionRequest) -> Any:
        model = served(body.model)
        max_new = body.max_completion_tokens or body.max_tokens or SamplingConfig().max_new_tokens
        if max_new > config.max_tokens_limit:
            raise ApiError(400, f"max_tokens: at most {config.max_tokens_limit}", param="max_tokens")
        defaults = SamplingConfig()
        sampling = SamplingConfig(
            n=body.n, max_new_tokens=max_new, stop=body.stop_list(), seed=body.seed or 0,
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            repetition_penalty=body.repetition_penalty or defaults.repetition_penalty,
        )
        # Off the event loop: a method may embed the request (prompt-rag retrieval) to build its chat.
        conversation = await asyncio.to_thread(_conversation, model, body.messages)
        job = Job(model, conversation, sampling, seeded=body.seed is not None,
                  prompt_logprobs=body.prompt_logprobs is not None,
                  render={"add_generation_prompt": body.add_generation_prompt,
                          "continue_final_message": body.continue_final_message})
        try:
            future = engine.submit(job)
        except Overloaded:
            raise ApiError(429, f"server busy ({engine.max_queue} requests queued); retry after "
                           f"{config.retry_after_s} s", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(config.retry_after_s)}) from None
        result: Completion = await asyncio.wrap_future(future)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        finish = ["stop" if ended else "length" for ended in result.ended]
        if body.stream:
            return StreamingResponse(_sse(completion_id, body.model, result, finish), media_type="text/event-stream")
        response: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish[i]} for i, text in enumerate(result.texts)],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": sum(result.completion_tokens),
                      "total_tokens": result.prompt_tokens + sum(result.completion_tokens)},
        }
        if result.prompt_logprobs is not None and result.prompt_ids is not None:
            decode = model.backend.slot.backend.tokenizer.decode
            response["prompt_logprobs"] = [None] + [
                {str(tok): {"logprob": lp, "rank": rank, "decoded_token": decode([tok])}}
                for tok, (lp, rank) in zip(result.prompt_ids[1:], result.prompt_logprobs, strict=True)
            ]
        return response

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(authorized)])
    async def load_adapter(body: LoadAdapterRequest) -> PlainTextResponse:
        await asyncio.wrap_future(engine.control(lambda: hot_load(engine, config, body.lora_name, body.lora_path)))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(authorized)])
    async def unload_adapter(body: UnloadAdapterRequest) -> PlainTextResponse:
        if not config.adapter_root:
            raise ApiError(403, "hot-loading is off; start the server with --adapter-root DIR", "permission_error")
        model = served(body.lora_name)
        if model.source == "base":
            raise ApiError(400, "the base model cannot be unloaded", param="lora_name")
        await asyncio.wrap_future(engine.control(lambda: engine.remove(body.lora_name)))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


def _conversation(model: Served, messages: list[Any]) -> list[dict[str, str]]:
    plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    try:
        return model.conversation(plain)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def _sse(completion_id: str, model: str, result: Completion, finish: list[str]) -> Iterator[str]:
    """The finished completion as OpenAI's stream of chunks (generation is batched, so it is sent when done)."""
    import re

    created = int(time.time())

    def chunk(index: int, delta: dict[str, str], reason: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        return f"data: {json.dumps(body)}\n\n"

    for index, text in enumerate(result.texts):
        yield chunk(index, {"role": "assistant", "content": ""})
        for piece in re.findall(r"\s*\S+|\s+", text):
            yield chunk(index, {"content": piece})
        yield chunk(index, {}, finish[index])
    yield "data: [DONE]\n\n"


# ---- running ----------------------------------------------------------------------------------------
@contextmanager
def running_server(engine: Engine, config: ServeConfig) -> Iterator[str]:
    """Serve `engine` from a background thread (tests, bench); yields the base URL, stops gracefully on exit."""
    import uvicorn

    check_bind(config.host, config.api_key)
    server = uvicorn.Server(uvicorn.Config(
        create_app(engine, config), host=config.host, port=config.port, log_level="warning",
        timeout_graceful_shutdown=int(config.shutdown_timeout_s), backlog=2048,
    ))
    thread = threading.Thread(target=server.run, name="personalign-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PersonalignError(f"the server did not start on {config.host}:{config.port} (port in use?)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(config.shutdown_timeout_s + 10)


def serve_forever(config: ServeConfig) -> None:
    """`personalign serve` with the hf engine: load, bind, serve until Ctrl-C / SIGTERM (graceful)."""
    import uvicorn

    from personalign.cli.common import console

    engine = build_engine(config)
    console.print(f"serving {', '.join(engine.models)} at http://{config.host}:{config.port}/v1")
    uvicorn.run(create_app(engine, config), host=config.host, port=config.port, log_level="info",
                timeout_graceful_shutdown=int(config.shutdown_timeout_s))
