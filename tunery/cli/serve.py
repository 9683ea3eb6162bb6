"""`tunery serve` and `tunery chat`.

Each command parses its flags, calls one library function and renders the result.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import typer
from pydantic import ValidationError

from tunery.cli import app
from tunery.cli.loop import check_watch_args, parse_every
from tunery.cli.output import console, err_console, handle_errors
from tunery.data.template import encode_prompt
from tunery.errors import ConfigError, DataError
from tunery.inference import SamplingParams
from tunery.inference.backend import DECODE_HELP
from tunery.inference.loaded_engine import load_engine
from tunery.platform.feedback_loop import check_loop_inputs
from tunery.platform.pii import load_pii_patterns
from tunery.platform.worker_pool import start_loop_watchers, start_workers, stop_workers
from tunery.rag import Retriever
from tunery.server.settings import ServerSettings, is_loopback
from tunery.store import list_keys, open_store

WEIGHTS_HELP = ("full (default: the model's own precision, what was evaluated), int8 (int8 per-channel weights "
                "everywhere) or int4 (int4 group-32 decoder, int8 head, decoded in a compiled fast lane: fastest by "
                "far). int8/int4 run on CPU only.")


def parse_adapters(pairs: list[str]) -> dict[str, str]:
    return parse_pairs(pairs, "--adapter", "RUN_DIR")


def parse_pairs(pairs: list[str], option: str, what: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{option} {pair!r} is not NAME={what}",
                              hint=f"e.g. {option} support={'runs/support-v1' if what == 'RUN_DIR' else 'indexes/kb'}")
        if name in parsed:  # the last would silently win
            raise ConfigError(f"{option} names {name!r} twice", hint=f"give each {option} its own NAME")
        parsed[name] = value
    return parsed


@app.command("serve")
@handle_errors
def serve_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Base model: built-in alias, folder, "
                              ".gguf file or run directory (+rag:INDEX_DIR to answer from an index)."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=RUN_DIR: serve a LoRA run under NAME "
                                      "(repeatable)."),
    rag: list[str] = typer.Option([], "--rag", help="NAME=INDEX_DIR: the served model NAME (the base or an adapter) "
                                  "answers from this index, citations in the response's `tunery` field (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default loopback only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    no_auth: bool = typer.Option(False, "--no-auth", help="No API keys (loopback only)."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log requests and answers."),
    redact_logs: bool = typer.Option(False, "--redact-logs", help="Scrub personal data and secrets from logged "
                                     "requests and answers (typed placeholders such as <EMAIL_1>)."),
    pii_patterns: Path | None = typer.Option(None, "--pii-patterns", help="YAML file of extra patterns for "
                                             "--redact-logs: `patterns: {NAME: REGEX}`."),
    log_retention_days: float | None = typer.Option(None, "--log-retention-days", help="Delete logged requests "
                                                    "older than this."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bf16 or fp32."),
    weights: str = typer.Option("full", "--weights", help=WEIGHTS_HELP),
    decode: str = typer.Option("auto", "--decode", envvar="TUNERY_DECODE", help=DECODE_HELP),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Most requests decoded together."),
    max_adapters: int = typer.Option(8, "--max-adapters", help="Most adapters in memory (LRU)."),
    workers: int = typer.Option(1, "--workers", min=0, help="Fine-tuning worker processes to start beside the API "
                                "(0: API only; more workers can run elsewhere with `tunery worker`)."),
    loop: list[str] = typer.Option([], "--loop", help="Run the feedback loop for this registered model beside the "
                                   "server (`tunery loop watch NAME`; repeatable); its candidates train on the workers, and the gates "
                                   "score both versions with this server's --weights."),
    loop_every: str = typer.Option("1d", "--loop-every", help="How often each --loop runs a pass: 30m, 6h, 1d."),
    loop_min_feedback: int = typer.Option(50, "--loop-min-feedback", min=1, help="A --loop pass does nothing below "
                                          "this many new feedback examples."),
    loop_tasks: Path | None = typer.Option(None, "--loop-tasks", help="Task file each --loop candidate is gated on."),
    loop_review: bool = typer.Option(False, "--loop-review", help="Leave --loop candidates that pass the gates as "
                                     "`candidate` for a person instead of promoting them."),
    loop_arg: list[str] = typer.Option([], "--loop-arg", help="Any other `tunery loop watch` option, passed on "
                                       "(repeatable, e.g. --loop-arg=--no-general --loop-arg=--set=train.max_steps=20)."),
    max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest file accepted by /v1/files, in MB."),
    webhook: str | None = typer.Option(None, "--webhook", help="POST signed fine_tuning.job.* outcomes to this URL."),
    webhook_secret: str | None = typer.Option(None, "--webhook-secret", envvar="TUNERY_WEBHOOK_SECRET",
                                              help="HMAC secret that signs --webhook deliveries."),
):
    """Serve the base model and adapters behind an OpenAI-compatible API, with fine-tuning workers and
    the web console at /ui."""
    import uvicorn

    from tunery.server.app import create_app

    try:
        settings = ServerSettings(model=model, adapters=parse_adapters(adapter), rag=parse_pairs(rag, "--rag", "INDEX_DIR"),
                                  host=host, port=port,
                                  no_auth=no_auth, no_log=no_log, log_retention_days=log_retention_days,
                                  redact_logs=redact_logs, pii_patterns=pii_patterns,
                                  dtype=dtype, weights=weights, decode=decode, max_batch_size=max_batch_size,
                                  max_adapters=max_adapters, max_upload_mb=max_upload_mb)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}") from None
    settings.check_exposure()
    if webhook and not webhook_secret:
        raise ConfigError("--webhook needs a secret to sign with", hint="set --webhook-secret or TUNERY_WEBHOOK_SECRET")
    if loop:  # checked before the model loads and any worker starts: a typo stops the start, nothing is left behind
        parse_every(loop_every)
        for name in loop:
            check_loop_inputs(name, tasks=loop_tasks)
            check_watch_args(name, loop_arg)
    if redact_logs:
        load_pii_patterns(pii_patterns)  # a bad pattern stops the start, naming the file and pattern
    if no_auth:
        err_console.print("[bold red]WARNING: --no-auth: every request is accepted without an API key, "
                          f"admin routes included. Bound to {host} only.[/]")
    elif not any(k.revoked_at is None for k in list_keys(open_store(settings.database))):
        err_console.print("[yellow]no API keys exist yet: create one with `tunery keys create`[/]")
    if not is_loopback(host):
        err_console.print(f"[yellow]listening on {host}: reachable from the network[/]")
    console.print(f"loading {model} ...")
    application = create_app(settings)
    state = application.state.tunery
    console.print(state.weights_summary, highlight=False)
    console.print(state.decode_summary, highlight=False)
    console.print(f"serving {', '.join(state.model_names())} on http://{host}:{port}/v1")
    console.print(f"web console on http://{host}:{port}/ui (sign in with a key, or `tunery ui-login`)")

    if webhook and webhook_secret:
        os.environ["TUNERY_WEBHOOK_SECRET"] = webhook_secret  # the workers sign; the secret never goes on a command line
    pool = start_workers(workers, extra_args=["--webhook", webhook] if webhook else [])
    if workers:
        console.print(f"{workers} fine-tuning worker{'s' if workers != 1 else ''} started")
    if loop:
        if not workers:
            err_console.print("[yellow]--loop with --workers 0: candidates wait for a `tunery worker` elsewhere[/]")
        watch_args = ["--every", loop_every, "--min-feedback", str(loop_min_feedback),
                      *(["--tasks", str(loop_tasks)] if loop_tasks else []), *(["--review"] if loop_review else []),
                      *loop_weights(weights, loop_arg), *loop_arg]
        pool += start_loop_watchers(loop, watch_args)
        console.print(f"feedback loop for {', '.join(loop)} every {loop_every}", highlight=False)
    try:
        uvicorn.run(application, host=host, port=port, log_level="info")
    finally:
        stop_workers(pool)


@app.command("chat")
@handle_errors
def chat_command(
    model: str = typer.Argument(..., help="Model reference or run directory (+rag:INDEX_DIR to answer from an "
                                "index and show the sources)."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0, help="Sampling temperature; 0 "
                                      "(the default) is greedy, the answers `tunery eval` scores."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens per answer."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bf16 or fp32."),
    weights: str = typer.Option("full", "--weights", help=WEIGHTS_HELP),
    decode: str = typer.Option("auto", "--decode", envvar="TUNERY_DECODE", help=DECODE_HELP),
):
    """Chat with a model or run in the terminal, answers streamed. /help lists the commands."""
    loaded = load_engine(model, dtype=dtype, weights=weights, decode=decode, max_batch_size=1)
    console.print(loaded.quantization.summary(), highlight=False)
    console.print(loaded.decode_summary, highlight=False)
    retriever = None
    if loaded.resolved.rag_index is not None:
        retriever = Retriever.open(loaded.resolved.rag_index)
        retriever.index.check_model(loaded.tokenizer, model)
    engine = loaded.engine.start()
    history = [{"role": "system", "content": system}] if system else []
    console.print("[dim]/help lists the commands; end a line with \\ to go on to the next[/]")
    try:
        while True:
            message = read_message(lambda more: console.input("[bold green]...>[/] " if more else "[bold green]you>[/] "))
            if message is None or message.strip() in ("/exit", "/quit"):
                break
            command = message.strip()
            if command == "/reset":
                history = history[:1] if system else []
                console.print("[dim]conversation cleared[/]")
                continue
            if command.startswith("/") and " " not in command and "\n" not in command:
                console.print(CHAT_HELP if command == "/help" else f"unknown command {command}; /help lists them",
                              highlight=False, markup=False)
                continue
            if not command:
                continue
            history.append({"role": "user", "content": message})
            try:
                prompt, sources = _chat_prompt(loaded.tokenizer, history, retriever,
                                               engine.max_context - min(max_tokens, engine.max_context // 4))
            except DataError as exc:
                err_console.print(exc.message, highlight=False, markup=False)
                history.pop()
                continue
            left = engine.max_context - len(prompt)
            if left < 1:
                err_console.print("the conversation fills the model's context: /reset to start over")
                history.pop()
                continue
            answer = _stream_answer(engine, prompt, SamplingParams(max_new_tokens=min(max_tokens, left),
                                                                   temperature=temperature), loaded.adapter)
            history.append({"role": "assistant", "content": answer})
            if sources:
                console.print("[dim]sources: " + "; ".join(f"[{i}] {h.label()}" for i, h in enumerate(sources, 1))
                              + "[/]", highlight=False)
    finally:
        engine.stop()


CHAT_HELP = """/reset   clear the conversation (the --system message stays)
/help    this list
/exit    quit (or /quit, or Ctrl-D)
A line ending in \\ goes on to the next line; a line of three double quotes (\"\"\") starts a block
(pasted text, say) that the next such line ends. The message is sent when it is complete."""
BLOCK = '"""'


def read_message(read_line) -> str | None:
    """One message from `read_line(more)` (more: a continuation): lines joined by a trailing backslash,
    or a block between lines of three double quotes. None at end of input."""
    lines: list[str] = []
    in_block = False
    while True:
        try:
            line = read_line(bool(lines) or in_block)
        except EOFError:
            return "\n".join(lines) if lines else None
        if line.strip() == BLOCK:
            if in_block or lines:
                return "\n".join(lines)
            in_block = True
            continue
        if in_block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
        else:
            lines.append(line)
            return "\n".join(lines)


def _chat_prompt(tokenizer, history: list[dict], retriever, max_prompt_tokens: int):
    """The prompt's token ids and the chunks retrieval put into it (the history keeps the bare question)."""
    if retriever is None:
        return encode_prompt(tokenizer, history), []
    prompt = retriever.prompt(history, tokenizer, max_prompt_tokens=max_prompt_tokens)
    return prompt.prompt_ids, prompt.hits


def _stream_answer(engine, prompt: list[int], params, adapter: str | None) -> str:
    events: queue.Queue = queue.Queue()
    request_id = engine.submit(prompt, params, events.put, adapter)
    pieces = []
    console.print("[bold blue]model>[/] ", end="")
    try:
        while True:
            event = events.get()
            console.print(event.text, end="", markup=False, highlight=False)
            pieces.append(event.text)
            if event.finish_reason:
                break
    except KeyboardInterrupt:
        engine.abort(request_id)
        console.print(" [dim](stopped)[/]", end="")
    console.print()
    return "".join(pieces)


def loop_weights(weights: str, loop_arg: list[str]) -> list[str]:
    """The --loop gates score what this server serves: its --weights, unless a --loop-arg names others."""
    if weights == "full" or any(arg == "--weights" or arg.startswith("--weights=") for arg in loop_arg):
        return []
    return ["--weights", weights]
