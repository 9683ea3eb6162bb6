"""The generation engine: one thread schedules every request over a decode backend (`backend.py`).

Each step admits new requests, then advances every running one a token, or a lone greedy one a
prompt-lookup draft (`speculation.py`). The backend holds weights, adapters and KV caches and runs
the passes; the engine keeps scheduling, sampling, stops and streaming (per-request callbacks), over
the request state in `sequence.py`.
Prompts arriving at an idle engine share one prefill pass; a backend with chunked prefill (the
lane) feeds one arriving alone or while others decode in the free rows of the next passes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch

from tunery.errors import ConfigError, NotFoundError, ResourceError
from tunery.inference.backend import Prompt, Row, open_backend
from tunery.inference.embedding import embed_ids
from tunery.inference.logits import RowShaper, needs_shaping
from tunery.inference.lora import read_peft_adapter
from tunery.inference.params import GenerationEvent, SamplingParams
from tunery.inference.sampling import make_generator, sample_token
from tunery.inference.sequence import LoadedAdapter, Sequence, group_by_length
from tunery.inference.speculation import DraftPolicy
from tunery.inference.stops import TextTracker

log = logging.getLogger("tunery.inference")

INITIAL_ROOM = 256  # cache positions reserved past a prompt; a cache that fills grows
# A prompt fed in chunks gets at least this many rows of each pass it shares with decode rows (a
# whole pass when alone), so a long prompt neither stalls the running requests nor starves.
PREFILL_MIN_ROWS = 8


class Engine:
    """Continuous step-level batching over one base model with many LoRA adapters."""

    def __init__(self, model, tokenizer, stop_token_ids: list[int], *, decode: str | None = None,
                 max_batch_size: int = 16, max_adapters: int = 8, max_context: int | None = None,
                 max_prefill_tokens: int = 4096, max_queued: int = 256, speculate: bool = True,
                 small_decode_threads: int | None = None, library: Path | None = None):
        self.model, self.tokenizer, self.stop_token_ids = model.eval(), tokenizer, set(stop_token_ids)
        self.max_batch_size, self.max_adapters, self.max_queued = max_batch_size, max_adapters, max_queued
        self.max_prefill_tokens, self.speculate = max_prefill_tokens, speculate
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 2048))
        # decode: auto | torch | lane (None: TUNERY_DECODE, else auto); `decode_reason` says why this one.
        self.backend, self.decode_reason = open_backend(model, self.max_context, decode,
                                                        small_decode_threads=small_decode_threads, library=library)
        self.drafts = DraftPolicy(*self.backend.draft_lengths)
        self.stats = {"decode_passes": 0, "draft_tokens": 0, "accepted_draft_tokens": 0, "prefill_passes": 0}
        self.adapters: dict[str, LoadedAdapter] = {}
        self._retired_slots: set[int] = set()  # removed once no running request uses them
        self._active: list[Sequence] = []
        self._pending: list[Sequence] = []  # submitted, not yet admitted
        self._commands: list[tuple[Callable[[], object], Future]] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        log.info("%s", self.decode_status)

    @property
    def decode_status(self) -> str:  # one line: which backend decodes, how, and why
        return f"decode: {self.backend.name} ({self.backend.describe()}; {self.decode_reason})"

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunery-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wait_idle(self, timeout_s: float = 30) -> bool:
        """Block until no request is queued or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._pending or self._active), timeout_s)

    @property
    def num_running(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        """Requests submitted and not yet admitted to a decode batch (the queue depth)."""
        return len(self._pending)

    # ---- requests --------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[GenerationEvent], None],
               adapter: str | None = None) -> int:
        """Queue a request; returns its id (for `abort`). Events arrive on the engine thread."""
        if not prompt_ids:
            raise ConfigError("the prompt is empty")
        if len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise ConfigError(f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_new_tokens}) "
                              f"exceeds the model's context of {self.max_context} tokens", code="context_length_exceeded")
        with self._cond:
            if len(self._pending) >= self.max_queued:
                raise ResourceError(f"{len(self._pending)} requests are already waiting", code="server_busy",
                                    hint="retry shortly")
            seq = Sequence(id=next(self._ids), prompt_ids=list(prompt_ids), params=params, slot=self._slot_of(adapter),
                            on_event=on_event, tracker=TextTracker(self.tokenizer, params.stop),
                            generator=make_generator(params.seed), draft=self.drafts.new_state(),
                            history=list(prompt_ids), shaper=self._shaper(params))
            self._pending.append(seq)
            self._cond.notify_all()
        return seq.id

    def abort(self, request_id: int) -> None:
        with self._cond:
            for seq in itertools.chain(self._pending, self._active):
                if seq.id == request_id:
                    seq.aborted = True
            self._cond.notify_all()

    def generate(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
                 timeout_s: float = 600) -> GenerationEvent:
        """Blocking convenience: the whole output as one event (text joined, final counts)."""
        pieces: list[str] = []
        logprobs: list[dict] = []
        done = threading.Event()
        final: list[GenerationEvent] = []

        def on_event(event: GenerationEvent) -> None:
            pieces.append(event.text)
            logprobs.extend(event.logprobs)
            if event.finish_reason is not None:
                final.append(event)
                done.set()

        self.start()
        request_id = self.submit(prompt_ids, params, on_event, adapter)
        if not done.wait(timeout_s):
            self.abort(request_id)
            done.wait(5)
        last = final[0] if final else GenerationEvent(finish_reason="abort")
        return GenerationEvent("".join(pieces), last.finish_reason, last.prompt_tokens, last.completion_tokens,
                               tuple(logprobs))

    def embed(self, token_lists: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        """Each token list's mean-pooled, unit-length last hidden state, on the model `adapter` names."""
        def run() -> list[list[float]]:
            slot = self._slot_of(adapter)
            return [embed_ids(self.model, self.backend.slots, ids, slot) for ids in token_lists]

        self.start()
        return self._call_on_engine(run)

    # ---- adapters --------------------------------------------------------------------------
    def load_adapter(self, name: str, adapter_dir: Path) -> None:
        """Read a PEFT folder and install it under `name` (replacing one of the same name)."""
        weights = read_peft_adapter(adapter_dir)

        def install() -> None:
            slot = self.backend.load_adapter(weights)  # refuses what the backend cannot apply
            if name in self.adapters:
                self._retire(name)
            while len(self.adapters) >= self.max_adapters:
                self._retire(min(self.adapters, key=lambda n: self.adapters[n].last_used_s))
            self.adapters[name] = LoadedAdapter(slot=slot, source=Path(adapter_dir))

        self._call_on_engine(install)

    def unload_adapter(self, name: str) -> None:
        def remove() -> None:
            if name not in self.adapters:
                raise NotFoundError("no adapter by that name is loaded")
            self._retire(name)

        self._call_on_engine(remove)

    def adapter_names(self) -> list[str]:
        """Loaded adapters, sorted; safe to call while the engine thread loads or drops one."""
        with self._cond:
            return sorted(self.adapters)

    def _retire(self, name: str) -> None:
        # Rows already running on this adapter finish on it; its weights go once they are gone.
        self._retired_slots.add(self.adapters.pop(name).slot)

    def _slot_of(self, adapter: str | None) -> int:
        if adapter is None:
            return 0
        entry = self.adapters.get(adapter)
        if entry is None:
            raise NotFoundError(f"no adapter named {adapter!r} is loaded")
        entry.last_used_s = time.monotonic()
        return entry.slot

    def _call_on_engine(self, fn: Callable[[], object]):
        if self._thread is None or threading.current_thread() is self._thread:
            with self._cond:
                return fn()
        future: Future = Future()
        with self._cond:
            self._commands.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout=120)

    # ---- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not (self._pending or self._active or self._commands or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    for seq in self._pending + self._active:
                        self._finish(seq, "abort")
                    return
                commands, self._commands = self._commands, []
                for fn, future in commands:
                    try:
                        future.set_result(fn())
                    except Exception as exc:  # handed to the caller's thread
                        future.set_exception(exc)
                room = max(0, self.max_batch_size - len(self._active))
                admitted, self._pending = self._pending[:room], self._pending[room:]
            try:
                self._step(admitted)
            except Exception:
                log.exception("generation step failed; ending the requests in the batch")
                for seq in self._active + admitted:
                    self._finish(seq, "error")
                self._active = []
                self.backend.clear()

    def _step(self, admitted: list[Sequence]) -> None:
        self._drop_finished()
        with torch.inference_mode():
            for seq in admitted:
                if seq.aborted:
                    self._finish(seq, "abort")
            new = [seq for seq in admitted if not seq.aborted]
            if new and self.backend.chunked_prefill and (len(new) == 1 or self._active):
                self._active += new  # fed in chunks by the next steps (see _advance)
            else:  # prompts of similar length share a pass; very different ones would mostly pad
                for group in group_by_length(new, self.max_prefill_tokens):
                    self._prefill(group)
            self._drop_finished()
            if self._active:
                self._advance()
                self._drop_finished()
        with self._cond:
            self._cond.notify_all()  # wakes wait_idle
            live = {seq.slot for seq in self._active + self._pending}
            for slot in list(self._retired_slots - live):
                self.backend.unload_adapter(slot)
                self._retired_slots.discard(slot)

    def _reserve(self, seq: Sequence) -> int:
        """Cache positions a new sequence starts with: its prompt, some room to generate, a draft."""
        return len(seq.prompt_ids) + min(seq.params.max_new_tokens, INITIAL_ROOM) + self.drafts.longest + 2

    def _prefill(self, seqs: list[Sequence]) -> None:
        logits = self.backend.prefill([Prompt(seq.id, seq.prompt_ids, seq.slot, self._reserve(seq)) for seq in seqs])
        self.stats["prefill_passes"] += 1
        for i, seq in enumerate(seqs):
            self._active.append(seq)
            seq.fed = len(seq.prompt_ids)
            self._accept(seq, self._pick(seq, logits[i]))

    def _advance(self) -> None:
        """One step's passes: a lone greedy request's draft; or a token for every running request,
        the first pass also carrying the next chunk of a prompt still being fed."""
        prompts = [seq for seq in self._active if seq.fed < len(seq.prompt_ids)]
        rows = [seq for seq in self._active if seq.fed >= len(seq.prompt_ids)]
        lone = rows[0] if len(rows) == 1 and not prompts else None
        if lone is not None and self.speculate and lone.params.temperature <= 0.0:
            room = min(self.max_context - lone.fed - 2, lone.params.max_new_tokens - lone.generated - 1)
            draft = self.drafts.draft(lone.draft, lone.history, room)
            if draft:
                self._step_draft(lone, draft)
                return
        limit = self.backend.max_rows or max(len(rows), 1)
        if prompts:
            seq, shared = prompts[0], rows[:limit - PREFILL_MIN_ROWS]
            rows = rows[len(shared):]
            chunk = seq.prompt_ids[seq.fed:seq.fed + limit - len(shared)]
            ends = seq.fed + len(chunk) == len(seq.prompt_ids)
            logits = self.backend.step([Row(seq.id, chunk, seq.fed, seq.slot, logits=int(ends),
                                            reserve=self._reserve(seq)), *[seq.next_row() for seq in shared]])
            self.stats["prefill_passes"] += 1
            seq.fed += len(chunk)
            if ends and not seq.aborted:
                self._accept(seq, self._pick(seq, logits[0]))
            self._accept_rows(shared, logits[int(ends):])
        for start in range(0, len(rows), limit):
            batch = rows[start:start + limit]
            self._accept_rows(batch, self.backend.step([seq.next_row() for seq in batch]))

    def _accept_rows(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Each request fed its last token; it gets the token picked from its row of `logits`."""
        if seqs:
            self.stats["decode_passes"] += 1
        for i, seq in enumerate(seqs):
            seq.fed += 1
            if not seq.aborted:
                self._accept(seq, self._pick(seq, logits[i]))

    def _step_draft(self, seq: Sequence, draft: list[int]) -> None:
        """Score the draft in one pass; keep what greedy decoding would have produced, one pick at a time."""
        logits = self.backend.step([Row(seq.id, [seq.last_token, *draft], seq.fed, seq.slot, logits=len(draft) + 1)])
        accepted = 0
        for i in range(len(draft) + 1):
            if seq.done or seq.aborted:
                break
            seq.fed += 1
            token = self._pick(seq, logits[i])
            self._accept(seq, token)
            if i == len(draft) or token != draft[i]:
                break
            accepted += 1
        self.drafts.record(seq.draft, len(draft), accepted)
        self.stats["decode_passes"] += 1
        self.stats["draft_tokens"] += len(draft)
        self.stats["accepted_draft_tokens"] += accepted
        if not seq.done:
            self.backend.rewind(seq.id, seq.fed)  # the cache keeps what was accepted

    # ---- sampling, stops, streaming ---------------------------------------------------------
    def _shaper(self, params: SamplingParams) -> RowShaper | None:
        if not needs_shaping(params):
            return None
        return RowShaper(params, self.tokenizer, sorted(self.stop_token_ids), int(self.model.config.vocab_size))

    def _pick(self, seq: Sequence, logits: torch.Tensor) -> int:
        """The one place a request's next token is chosen from its logits [vocab] (drafts included)."""
        if seq.shaper is None:
            return sample_token(logits, seq.params, seq.generator)
        logits = seq.shaper.apply(logits)
        token = sample_token(logits, seq.params, seq.generator)
        if seq.params.logprobs is not None:
            seq.logprobs.append(seq.shaper.logprob_entry(logits, token, self.tokenizer))
        seq.shaper.accept(token)
        return token

    def _accept(self, seq: Sequence, token: int) -> None:
        seq.generated += 1
        seq.last_token = token
        seq.history.append(token)
        if token in self.stop_token_ids and not seq.params.ignore_eos:
            self._finish(seq, "stop")
            return
        text = seq.tracker.add(token)
        if seq.tracker.stopped:
            self._finish(seq, "stop", text)
        elif seq.generated >= seq.params.max_new_tokens or seq.fed + 1 >= self.max_context:
            self._finish(seq, "length", text)
        elif text:
            self._emit(seq, GenerationEvent(text=text))

    def _drop_finished(self) -> None:
        for seq in self._active:
            if seq.aborted and not seq.done:
                self._finish(seq, "abort")
        finished = [seq.id for seq in self._active if seq.done]
        if finished:
            self.backend.free(finished)
            self._active = [seq for seq in self._active if not seq.done]

    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        if seq.done:
            return
        seq.done = True
        if reason in ("stop", "length"):
            text += seq.tracker.flush()
        self._emit(seq, GenerationEvent(text=text, finish_reason=reason, prompt_tokens=len(seq.prompt_ids),
                                        completion_tokens=seq.generated))

    def _emit(self, seq: Sequence, event: GenerationEvent) -> None:
        if seq.logprobs:
            event = dataclasses.replace(event, logprobs=tuple(seq.logprobs))
            seq.logprobs = []
        try:
            seq.on_event(event)
        except Exception:  # a broken consumer must not stop the batch
            log.exception("event consumer failed; aborting request %s", seq.id)
            seq.aborted = True
