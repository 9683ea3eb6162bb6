"""Handlers for /v1/chat/completions and /v1/completions: validate, plan, run, stream, log.

A plan is the prompt tokens, sampling settings and adapter; running it submits `n` requests to
the engine and relays their events. A client that goes away aborts its requests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunery.data.template import encode_prompt, encode_text
from tunery.data.tools import HERMES, ToolSyntax
from tunery.errors import DataError, StoreError
from tunery.inference.params import GenerationEvent, SamplingParams
from tunery.platform.metrics import RequestTimer
from tunery.platform.pii import Scrubber, load_pii_patterns, scrub_messages
from tunery.server.auth import Caller
from tunery.server.errors import ApiError, error_body
from tunery.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    TuneryExtension,
    Usage,
)
from tunery.server.state import ServerState
from tunery.server.structured import ToolCallStream, completion_logprobs, parse_tool_calls, plan_structure
from tunery.store.requests import LoggedCompletion, log_completion

log = logging.getLogger("tunery.server")
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class Plan:
    id: str
    kind: str  # "chat" | "text"
    model: str
    adapter: str | None
    prompt_ids: list[int]
    params: SamplingParams
    n: int
    logged_messages: list[dict]
    stream: bool
    include_usage: bool
    created: int
    citations: list[dict] | None = None  # the chunks a retrieval model's prompt holds
    tools: list[dict] | None = None  # function definitions: the answer's tool calls are parsed out
    tool_syntax: ToolSyntax = HERMES  # how the model writes those calls
    logprobs: bool = False


def _check_caps(state: ServerState, req) -> list[str]:
    settings = state.settings
    if req.n > settings.max_n:
        raise ApiError(400, f"n must be at most {settings.max_n}", param="n", code="n_too_large")
    stops = req.stop_list()
    if len(stops) > settings.max_stop:
        raise ApiError(400, f"at most {settings.max_stop} stop sequences are allowed", param="stop")
    if any(len(s) > settings.max_stop_chars or not s for s in stops):
        raise ApiError(400, f"each stop sequence must be 1 to {settings.max_stop_chars} characters", param="stop")
    return stops


def _max_new_tokens(state: ServerState, prompt_len: int, requested: int | None) -> int:
    left = state.engine.max_context - prompt_len
    if left < 1:
        raise ApiError(400, f"the prompt is {prompt_len} tokens, which fills the model's context of "
                            f"{state.engine.max_context} tokens", param="messages", code="context_length_exceeded")
    if requested is not None and requested > left:
        raise ApiError(400, f"max_tokens is {requested}, but only {left} tokens of the model's context of "
                            f"{state.engine.max_context} are left after the {prompt_len}-token prompt",
                       param="max_tokens", code="context_length_exceeded")
    return requested if requested is not None else min(state.settings.default_max_tokens, left)


def plan_chat(state: ServerState, req: ChatCompletionRequest) -> Plan:
    adapter = state.adapter_for(req.model)
    stops = _check_caps(state, req)
    structure = plan_structure(req, state.tokenizer)
    messages = structure.messages
    citations = None
    try:
        retriever = state.retriever_for(req.model)
        if retriever is not None:
            room = req.requested_max_tokens() or min(state.settings.default_max_tokens, state.engine.max_context // 4)
            prompt = retriever.prompt(messages, state.tokenizer, max_prompt_tokens=state.engine.max_context - room,
                                      tools=structure.prompt_tools, parallel_tool_calls=req.parallel_tool_calls)
            prompt_ids, citations = prompt.prompt_ids, prompt.citations()
        else:
            prompt_ids = encode_prompt(state.tokenizer, messages, tools=structure.prompt_tools,
                                       parallel_tool_calls=req.parallel_tool_calls)
    except DataError as exc:
        raise ApiError(400, exc.message, param="messages", code=exc.code) from None
    plan = _plan(state, req, "chat", "chatcmpl-", adapter, prompt_ids, stops, messages, req.requested_max_tokens(),
                 grammar=structure.grammar, logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    return replace(plan, citations=citations, tools=structure.tools or None, tool_syntax=structure.syntax,
                   logprobs=req.logprobs)


def plan_completion(state: ServerState, req: CompletionRequest) -> Plan:
    adapter = state.adapter_for(req.model)
    stops = _check_caps(state, req)
    if req.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    try:
        text = req.prompt_text()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="prompt") from None
    if not text:
        raise ApiError(400, "the prompt is empty", param="prompt")
    citations = None
    retriever = state.retriever_for(req.model)
    if retriever is not None:  # the prompt is the query, and goes into the index's template
        room = req.max_tokens or min(state.settings.default_max_tokens, state.engine.max_context // 4)
        try:
            prompt = retriever.text_prompt(text, state.tokenizer, max_prompt_tokens=state.engine.max_context - room)
        except DataError as exc:
            raise ApiError(400, exc.message, param="prompt", code=exc.code) from None
        prompt_ids, citations = prompt.prompt_ids, prompt.citations()
    else:
        prompt_ids = encode_text(state.tokenizer, text)
    plan = _plan(state, req, "text", "cmpl-", adapter, prompt_ids, stops, [{"role": "user", "content": text}],
                 req.max_tokens, logprobs=req.logprobs)
    return replace(plan, citations=citations, logprobs=req.logprobs is not None)


def _plan(state, req, kind, prefix, adapter, prompt_ids, stops, logged, requested, *, grammar=None,
          logprobs=None) -> Plan:
    try:
        bias = req.logit_bias_pairs()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="logit_bias") from None
    params = SamplingParams(max_new_tokens=_max_new_tokens(state, len(prompt_ids), requested),
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=tuple(stops),
                            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                            logit_bias=bias, logprobs=logprobs, grammar=grammar)
    return Plan(id=prefix + secrets.token_hex(12), kind=kind, model=req.model, adapter=adapter,
                prompt_ids=prompt_ids, params=params, n=req.n, logged_messages=logged, stream=req.stream,
                include_usage=bool(req.stream_options and req.stream_options.include_usage),
                created=int(time.time()))


class Submitted:
    """The engine requests of one plan and the queue their events arrive on (via the event loop)."""

    def __init__(self, state: ServerState, plan: Plan):
        loop = asyncio.get_running_loop()
        self.state, self.plan, self.request_ids = state, plan, list[int]()
        self.queue: asyncio.Queue[tuple[int, GenerationEvent]] = asyncio.Queue()
        self.timer = RequestTimer(state.metrics, plan.model)
        self.completion_tokens = 0
        try:
            for index in range(plan.n):
                seed = None if plan.params.seed is None else plan.params.seed + index
                self.request_ids.append(state.engine.submit(
                    plan.prompt_ids, replace(plan.params, seed=seed),
                    functools.partial(self._deliver, loop, index),
                    plan.adapter))
        except Exception:
            self.abort()
            raise

    def _deliver(self, loop: asyncio.AbstractEventLoop, index: int, event: GenerationEvent) -> None:
        """Called on the engine thread: hand the event to the request's event loop."""
        loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

    def abort(self) -> None:
        for request_id in self.request_ids:
            self.state.engine.abort(request_id)

    async def events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """Yield (choice index, event) until every choice has finished."""
        remaining = self.plan.n
        try:
            while remaining:
                index, event = await self.queue.get()
                if event.text:
                    self.timer.token()
                if event.finish_reason is not None:
                    remaining -= 1
                    self.completion_tokens += event.completion_tokens
                yield index, event
            self.timer.finish(len(self.plan.prompt_ids), self.completion_tokens)
        finally:
            if remaining:  # cancelled (client gone) or failed: free the engine rows at once
                self.abort()


def _usage(plan: Plan, finals: list[GenerationEvent | None]) -> Usage:
    completion = sum(f.completion_tokens for f in finals if f is not None)
    return Usage(prompt_tokens=len(plan.prompt_ids), completion_tokens=completion,
                 total_tokens=len(plan.prompt_ids) + completion)


def _raise_for_failure(finals: list[GenerationEvent | None]) -> None:
    reasons = {f.finish_reason for f in finals if f is not None}
    if "error" in reasons:
        raise ApiError(500, "generation failed", type_="server_error", code="generation_failed")
    if "abort" in reasons:
        raise ApiError(503, "the server is shutting down", type_="server_error", code="unavailable")


def _log(state: ServerState, plan: Plan, caller: Caller, texts: list[str], finals, started_s: float) -> None:
    if state.settings.no_log:
        return
    usage = _usage(plan, finals)
    messages = plan.logged_messages
    if state.settings.redact_logs:
        messages, texts, _ = scrub_messages(log_scrubber(state.settings.pii_patterns), messages, texts)
    entry = LoggedCompletion(id=plan.id, model=plan.model, kind=plan.kind, messages=messages,
                             outputs=texts, finish_reason=finals[0].finish_reason if finals[0] else None,
                             prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                             latency_ms=int((time.monotonic() - started_s) * 1000), key_id=caller.key_id)
    try:
        log_completion(state.store, entry)
    except (StoreError, OSError, Exception) as exc:  # the answer still goes out; the log is best effort
        log.warning("could not log completion %s: %s", plan.id, type(exc).__name__)


@functools.lru_cache(maxsize=4)
def log_scrubber(patterns_file) -> Scrubber:
    return Scrubber(load_pii_patterns(patterns_file))


async def _collect(submitted: Submitted) -> tuple[list[str], list[GenerationEvent | None]]:
    plan = submitted.plan
    texts = [""] * plan.n
    finals: list[GenerationEvent | None] = [None] * plan.n
    logprobs: list[list[dict]] = [[] for _ in range(plan.n)]
    async for index, event in submitted.events():
        texts[index] += event.text
        logprobs[index].extend(event.logprobs)
        if event.finish_reason is not None:
            finals[index] = replace(event, logprobs=tuple(logprobs[index]))
    return texts, finals


async def _collect_unless_disconnected(state: ServerState, plan: Plan, request: Request):
    task = asyncio.ensure_future(_collect(Submitted(state, plan)))
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ApiError(499, "client closed the request", code="client_closed")


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, caller: Caller, request: Request):
    plan, started_s = plan_chat(state, req), time.monotonic()
    if plan.stream:
        return _stream(state, plan, caller, started_s, _chat_chunks)
    texts, finals = await _collect_unless_disconnected(state, plan, request)
    _raise_for_failure(finals)
    _log(state, plan, caller, texts, finals, started_s)
    choices = [_chat_choice(plan, i, texts[i], finals[i]) for i in range(plan.n)]
    completion = ChatCompletion(id=plan.id, created=plan.created, model=plan.model, choices=choices,
                                usage=_usage(plan, finals), tunery=_extension(plan))
    body = completion.model_dump()
    if body["tunery"] is None:
        del body["tunery"]
    return body


def _chat_choice(plan: Plan, index: int, text: str, final: GenerationEvent) -> ChatChoice:
    logprobs = ChatLogprobs(content=list(final.logprobs)) if plan.logprobs else None
    if plan.tools:
        content, calls = parse_tool_calls(text, plan.tools, plan.tool_syntax)
        if calls:  # an answer cut off by max_tokens says so, as OpenAI's do, even after whole calls
            reason = "length" if final.finish_reason == "length" else "tool_calls"
            return ChatChoice(index=index, message=AssistantMessage(content=content, tool_calls=calls),
                              finish_reason=reason, logprobs=logprobs)
    return ChatChoice(index=index, message=AssistantMessage(content=text), finish_reason=final.finish_reason,
                      logprobs=logprobs)


def _tool_chunks(plan: Plan, index: int, stream: ToolCallStream, event: GenerationEvent):
    """The chunks one generation event makes in a tool-using answer: content, call pieces, the finish."""
    deltas = stream.feed(event.text) + (stream.finish() if event.finish_reason is not None else [])
    if event.finish_reason is not None:
        reason = "tool_calls" if stream.calls and event.finish_reason != "length" else event.finish_reason
        deltas.append(DeltaMessage())
    chunks = [ChatCompletionChunk(id=plan.id, created=plan.created, model=plan.model,
                                  choices=[ChatChunkChoice(index=index, delta=delta)]) for delta in deltas]
    if event.finish_reason is not None:
        chunks[-1].choices[0].finish_reason = reason
    return chunks


def _extension(plan: Plan) -> TuneryExtension | None:
    return TuneryExtension(citations=plan.citations) if plan.citations is not None else None


async def create_completion(state: ServerState, req: CompletionRequest, caller: Caller, request: Request):
    plan, started_s = plan_completion(state, req), time.monotonic()
    if plan.stream:
        return _stream(state, plan, caller, started_s, _text_chunks)
    texts, finals = await _collect_unless_disconnected(state, plan, request)
    _raise_for_failure(finals)
    _log(state, plan, caller, texts, finals, started_s)
    choices = [CompletionChoice(index=i, text=texts[i], finish_reason=finals[i].finish_reason,
                                logprobs=completion_logprobs(list(finals[i].logprobs)) if plan.logprobs else None)
               for i in range(plan.n)]
    completion = Completion(id=plan.id, created=plan.created, model=plan.model, choices=choices,
                            usage=_usage(plan, finals), tunery=_extension(plan))
    return completion.model_dump(exclude={"tunery"} if completion.tunery is None else set())


def _sse(obj) -> str:
    payload = obj if isinstance(obj, dict) else obj.model_dump(exclude_none=False)
    if payload.get("tunery", 0) is None:
        payload.pop("tunery")
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _chat_chunks(plan: Plan, index: int, event: GenerationEvent | None, usage: Usage | None = None):
    if usage is not None:
        return ChatCompletionChunk(id=plan.id, created=plan.created, model=plan.model, choices=[], usage=usage)
    if event is None:  # the opening chunk of a choice carries the role
        delta = DeltaMessage(role="assistant", content="")
        return ChatCompletionChunk(id=plan.id, created=plan.created, model=plan.model,
                                   choices=[ChatChunkChoice(index=index, delta=delta)], tunery=_extension(plan))
    choice = ChatChunkChoice(index=index, delta=DeltaMessage(content=event.text or None),
                             finish_reason=event.finish_reason,
                             logprobs=ChatLogprobs(content=list(event.logprobs)) if plan.logprobs else None)
    return ChatCompletionChunk(id=plan.id, created=plan.created, model=plan.model, choices=[choice])


def _text_chunks(plan: Plan, index: int, event: GenerationEvent | None, usage: Usage | None = None):
    if usage is not None:
        return Completion(id=plan.id, created=plan.created, model=plan.model, choices=[], usage=usage)
    if event is None:  # a retrieval model's citations open each choice, as in chat
        if plan.citations is None:
            return None
        return Completion(id=plan.id, created=plan.created, model=plan.model, tunery=_extension(plan),
                          choices=[CompletionChoice(index=index, text="", finish_reason=None)])
    return Completion(id=plan.id, created=plan.created, model=plan.model,
                      choices=[CompletionChoice(index=index, text=event.text, finish_reason=event.finish_reason,
                                                logprobs=completion_logprobs(list(event.logprobs))
                                                if plan.logprobs else None)])


def _stream(state: ServerState, plan: Plan, caller: Caller, started_s: float, make_chunk) -> StreamingResponse:
    submitted = Submitted(state, plan)  # before the 200 goes out, so a refused submit is still a 4xx

    async def events():
        texts, finals = [""] * plan.n, [None] * plan.n
        streams = [ToolCallStream(plan.tools, plan.tool_syntax) for _ in range(plan.n)] if plan.tools else []
        for index in range(plan.n):
            opening = make_chunk(plan, index, None)
            if opening is not None:
                yield _sse(opening)
        async for index, event in submitted.events():
            texts[index] += event.text
            if event.finish_reason in ("error", "abort"):
                yield _sse(error_body("generation failed", "server_error", "generation_failed"))
                return
            if event.finish_reason is not None:
                finals[index] = event
            if plan.tools:
                for chunk in _tool_chunks(plan, index, streams[index], event):
                    yield _sse(chunk)
                continue
            if event.text or event.finish_reason:
                yield _sse(make_chunk(plan, index, event))
        if plan.include_usage:
            yield _sse(make_chunk(plan, 0, None, usage=_usage(plan, finals)))
        yield "data: [DONE]\n\n"
        _log(state, plan, caller, texts, finals, started_s)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
