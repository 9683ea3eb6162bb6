"""The generation engine: one thread owns the model and steps every active request together.

Each step first prefills newly arrived requests one by one, then decodes one token for all
active rows in a single forward pass, rows using different adapters included. Results leave
through a per-request callback; aborting a request frees its row at the next step.

On an int4 model every decode step runs in the fast lane (`fastlane.py`): one call into compiled
code for all active rows, each row's KV cache held there from its prefill on. A prompt that arrives
alone or while others decode is prefilled there too, in chunks that share the passes with the
running rows. Other models step through the torch model with one left-padded cache for the batch.

A lone greedy row speculates (prompt lookup): the tokens that followed the latest earlier
occurrence of its last few tokens are proposed as a draft, one forward pass scores them all, and
the longest prefix the model itself would have chosen is kept, plus the model's own next token.
Greedy output is unchanged; a batch-1 step through the torch model on a CPU costs about the same
for one token as for seven, so every accepted draft token is nearly free there (in the fast lane
drafts are shorter, see FAST_MAX_DRAFT).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache

from tunery.errors import ConfigError, NotFoundError, ResourceError
from tunery.inference.batch import BatchCache, cache_tensors
from tunery.inference.fastlane import MAX_ROWS as FAST_MAX_ROWS
from tunery.inference.fastlane import FastLane, FastLaneUnavailable
from tunery.inference.lora import AdapterSlots, read_peft_adapter
from tunery.inference.params import GenerationEvent, SamplingParams
from tunery.inference.sampling import make_generator, sample_token
from tunery.inference.stops import TextTracker

log = logging.getLogger("tunery.inference")


@dataclass
class _Sequence:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    slot: int
    on_event: Callable[[GenerationEvent], None]
    tracker: TextTracker
    generator: torch.Generator
    fed: int = 0  # tokens already in the KV cache
    last_token: int = -1
    history: list[int] = field(default_factory=list)  # prompt + generated tokens (speculation drafts from it)
    spec_wait: int = 0  # plain steps left before drafting again
    spec_backoff: int = 1  # plain steps after the next fully rejected draft (doubles, up to SPEC_MAX_BACKOFF)
    spec_len: int = 1  # fast-lane draft length: grows while drafts are accepted whole, back to 1 on a miss
    generated: int = 0
    aborted: bool = False
    done: bool = False


@dataclass
class _Adapter:
    slot: int
    source: Path
    last_used_s: float = field(default_factory=time.monotonic)


SPEC_MAX_DRAFT = 6
SPEC_NGRAM_SIZES = (3, 2)
SPEC_SEARCH_WINDOW = 1024  # tokens searched back for a match (keeps the lookup cheap on long contexts)
# A decode step of a few rows on int4/int8 weights is a string of tiny kernels; waking a second
# thread for each costs more than it gives. Default model, int4, 48 tokens per request, tokens/s
# with 1 / 2 threads: 1 row 35 / 25, 2 rows 53 / 40, 4 rows 81 / 61, 8 rows 99 / 99 (full-precision
# weights gain nothing from 1 thread and lose at 4+ rows: 4 rows 43 / 50, 8 rows 62 / 83).
SMALL_DECODE_ROWS = 4
SPEC_MAX_BACKOFF = 16  # a draft rejected outright costs a little: text that does not repeat stops drafting
# In the fast lane a pass costs more per extra token (default model, 2 threads, ms per pass for
# 1 / 2 / 4 rows: 6.8 / 7.7 / 11.2), so drafts there start at one token and grow by one while they
# are accepted whole, up to FAST_MAX_DRAFT.
FAST_MAX_DRAFT = 3
FAST_INITIAL_ROOM = 256  # positions reserved past the prompt; a lane cache doubles when it fills
# A prompt prefilled in the lane gets at least this many rows of each pass it shares with decode
# rows (all 16 when it is alone), so a long prompt neither stalls the running requests nor starves.
FAST_PREFILL_MIN_ROWS = 8


def threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def ngram_draft(tokens: list[int], max_draft: int, sizes: tuple[int, ...] = SPEC_NGRAM_SIZES) -> list[int]:
    """Up to `max_draft` tokens that followed the latest earlier occurrence of the last n tokens."""
    if max_draft <= 0:
        return []
    for n in sizes:
        if len(tokens) <= n:
            continue
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, max(-1, len(tokens) - SPEC_SEARCH_WINDOW - 1), -1):
            if tokens[start:start + n] == tail:
                return tokens[start + n:start + n + max_draft]
    return []


def _lane_capacity(seq: _Sequence) -> int:
    """Positions a new sequence's lane cache starts with: its prompt, some room to generate, a draft."""
    return len(seq.prompt_ids) + min(seq.params.max_new_tokens, FAST_INITIAL_ROOM) + FAST_MAX_DRAFT + 2


def _group_by_length(seqs: list[_Sequence], max_tokens: int) -> list[list[_Sequence]]:
    """Consecutive groups (by prompt length) whose padded size stays within `max_tokens`."""
    groups: list[list[_Sequence]] = []
    for seq in sorted(seqs, key=lambda s: len(s.prompt_ids)):
        group = groups[-1] if groups else None
        if group and len(seq.prompt_ids) * (len(group) + 1) <= max_tokens \
                and len(seq.prompt_ids) <= 2 * len(group[0].prompt_ids):
            group.append(seq)
        else:
            groups.append([seq])
    return groups


class Engine:
    """Continuous step-level batching over one base model with many LoRA adapters."""

    def __init__(self, model, tokenizer, stop_token_ids: list[int], *, max_batch_size: int = 16,
                 max_adapters: int = 8, max_context: int | None = None, max_prefill_tokens: int = 4096,
                 max_queued: int = 256, speculate: bool = True, small_decode_threads: int | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.max_batch_size = max_batch_size
        self.max_adapters = max_adapters
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queued = max_queued
        self.speculate = speculate
        # Decode steps of at most SMALL_DECODE_ROWS rows run on this many threads (None: torch's setting).
        self.small_decode_threads = small_decode_threads
        self._default_threads = torch.get_num_threads()
        self.stats = {"decode_passes": 0, "draft_tokens": 0, "accepted_draft_tokens": 0, "fast_lane_passes": 0,
                      "prefill_passes": 0}
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 2048))
        self.slots = AdapterSlots(model)
        self.adapters: dict[str, _Adapter] = {}
        self._retired_slots: set[int] = set()
        self._batch = BatchCache()
        self._active: list[_Sequence] = []
        self._pending: list[_Sequence] = []
        self._commands: list[tuple[Callable[[], object], Future]] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # The fast lane, when this model and machine allow it; otherwise why not.
        self._fast: FastLane | None = None
        self.fast_lane_off: str | None = None
        try:
            self._fast = FastLane(model, self.max_context)
        except FastLaneUnavailable as exc:
            self.fast_lane_off = str(exc)
        log.info("fast lane (compiled decode steps): %s", self.fast_lane_status)

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
    def fast_lane(self) -> FastLane | None:
        """The compiled decode path, when this engine has one (else `fast_lane_off` says why)."""
        return self._fast

    @property
    def fast_lane_status(self) -> str:
        """`on (N threads)` or `off (reason)`."""
        return f"off ({self.fast_lane_off})" if self._fast is None else f"on ({threads_text(self.fast_lane_threads)})"

    @property
    def fast_lane_threads(self) -> int:
        """Threads a fast-lane pass runs on: torch's count when the engine was made."""
        return self._default_threads

    @property
    def num_running(self) -> int:
        return len(self._active)

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
            slot = self._slot_of(adapter)
            seq = _Sequence(id=next(self._ids), prompt_ids=list(prompt_ids), params=params, slot=slot,
                            on_event=on_event, tracker=TextTracker(self.tokenizer, params.stop),
                            generator=make_generator(params.seed), history=list(prompt_ids))
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
        done = threading.Event()
        final: list[GenerationEvent] = []

        def on_event(event: GenerationEvent) -> None:
            pieces.append(event.text)
            if event.finish_reason is not None:
                final.append(event)
                done.set()

        self.start()
        request_id = self.submit(prompt_ids, params, on_event, adapter)
        if not done.wait(timeout_s):
            self.abort(request_id)
            done.wait(5)
        last = final[0] if final else GenerationEvent(finish_reason="abort")
        return GenerationEvent("".join(pieces), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    # ---- adapters --------------------------------------------------------------------------
    def load_adapter(self, name: str, adapter_dir: Path) -> None:
        """Read a PEFT folder and install it under `name` (replacing one of the same name)."""
        weights = read_peft_adapter(adapter_dir)

        def install() -> None:
            if name in self.adapters:
                self._retire(name)
            while len(self.adapters) >= self.max_adapters:
                self._retire(min(self.adapters, key=lambda n: self.adapters[n].last_used_s))
            self.adapters[name] = _Adapter(slot=self.slots.install(weights), source=Path(adapter_dir))

        self._call_on_engine(install)

    def unload_adapter(self, name: str) -> None:
        def remove() -> None:
            if name not in self.adapters:
                raise NotFoundError(f"no adapter named {name!r} is loaded")
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
                self._active, self._batch = [], BatchCache()
                if self._fast is not None:
                    self._fast.clear()

    def _step(self, admitted: list[_Sequence]) -> None:
        self._drop_finished()
        with torch.inference_mode():
            for seq in admitted:
                if seq.aborted:
                    self._finish(seq, "abort")
            new = [seq for seq in admitted if not seq.aborted]
            # Prompts of similar length share a prefill pass; very different ones would mostly pad.
            if new:
                self._use_threads(self._default_threads)
            for group in _group_by_length(new, self.max_prefill_tokens):
                self._prefill(group)
            self._drop_finished()
            if self._active:
                small = self.small_decode_threads and len(self._active) <= SMALL_DECODE_ROWS
                self._use_threads(self.small_decode_threads if small else self._default_threads)
                lone = self._active[0] if len(self._active) == 1 else None
                if self._fast is not None:
                    self._decode_fast()
                elif self.speculate and lone is not None and lone.params.temperature <= 0.0:
                    self._decode_speculative(lone)
                else:
                    self._decode()
                self._drop_finished()
            if not self._active:  # the thread count is process-wide: give it back while idle
                self._use_threads(self._default_threads)
        with self._cond:
            self._cond.notify_all()  # wakes wait_idle
            live = {seq.slot for seq in self._active + self._pending}
            for slot in list(self._retired_slots - live):
                self.slots.remove(slot)
                if self._fast is not None:
                    self._fast.forget(slot)
                self._retired_slots.discard(slot)

    def _use_threads(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def _route(self, slots: list[int]) -> None:
        distinct = set(slots)
        if distinct == {0}:
            self.slots.routing.groups = []
        elif len(distinct) == 1:
            self.slots.routing.groups = [(slots[0], None)]
        else:
            self.slots.routing.groups = [
                (slot, torch.tensor([i for i, s in enumerate(slots) if s == slot], device=self.device))
                for slot in distinct if slot
            ]

    def _prefill(self, seqs: list[_Sequence]) -> None:
        """One forward over the new prompts, left-padded together; their rows join the batch (or
        the fast lane). With a fast lane, a prompt that arrives alone or while others decode is
        instead prefilled there in chunks, pass by pass, next to the other rows' tokens; several
        prompts arriving at an idle engine still take this one batched forward, which the torch
        model's dense path serves faster than 16-row passes."""
        if self._fast is not None and (len(seqs) == 1 or self._active):
            for seq in seqs:  # prefilled in chunks by the next passes (see _decode_fast)
                self._fast.open(seq.id, _lane_capacity(seq))
                seq.fed = 0
                self._active.append(seq)
            return
        width = max(len(seq.prompt_ids) for seq in seqs)
        pads = [width - len(seq.prompt_ids) for seq in seqs]
        input_ids = torch.tensor([[0] * pad + seq.prompt_ids for pad, seq in zip(pads, seqs, strict=True)],
                                 device=self.device)
        mask = torch.tensor([[0] * pad + [1] * len(seq.prompt_ids) for pad, seq in zip(pads, seqs, strict=True)],
                            device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        self._route([seq.slot for seq in seqs])
        cache = DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=mask if any(pads) else None, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        if self._fast is not None:  # each row's cache moves into the fast lane, padding left behind
            layers = cache_tensors(cache)
            for i, seq in enumerate(seqs):
                self._fast.load(seq.id, [(k[i:i + 1], v[i:i + 1]) for k, v in layers], len(seq.prompt_ids),
                                _lane_capacity(seq))
        else:
            self._batch.append_rows(cache_tensors(cache), mask)
        logits = out.logits[:, -1].float().cpu()  # samplers use per-request CPU generators
        for i, seq in enumerate(seqs):
            self._active.append(seq)
            seq.fed = len(seq.prompt_ids)
            self._accept(seq, sample_token(logits[i], seq.params, seq.generator))

    def _decode(self) -> None:
        self.stats["decode_passes"] += 1
        rows = self._active
        self._route([seq.slot for seq in rows])
        input_ids = torch.tensor([[seq.last_token] for seq in rows], device=self.device)
        positions = torch.tensor([[seq.fed] for seq in rows], device=self.device)
        mask = self._batch.extend_mask()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=self._batch.cache, use_cache=True)
        logits = out.logits[:, -1].float().cpu()
        for i, seq in enumerate(rows):
            seq.fed += 1
            if not seq.aborted:
                self._accept(seq, sample_token(logits[i], seq.params, seq.generator))

    def _decode_speculative(self, seq: _Sequence) -> None:
        """Score a prompt-lookup draft in one pass; keep what greedy decoding would have produced."""
        room = min(SPEC_MAX_DRAFT, self.max_context - seq.fed - 2, seq.params.max_new_tokens - seq.generated - 1)
        draft = ngram_draft(seq.history, room) if seq.spec_wait <= 0 else []
        if not draft:
            seq.spec_wait -= 1
            self._decode()
            return
        self._route([seq.slot])
        inputs = [seq.last_token, *draft]
        input_ids = torch.tensor([inputs], device=self.device)
        positions = torch.arange(seq.fed, seq.fed + len(inputs), device=self.device).unsqueeze(0)
        mask = self._batch.extend_mask(len(inputs))
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=self._batch.cache, use_cache=True)
        accepted = self._take_draft(seq, draft, out.logits[0].float().argmax(dim=-1).tolist())
        self._batch.drop_last_columns(len(draft) - accepted)  # the cache keeps what was accepted

    def _take_draft(self, seq: _Sequence, draft: list[int], picks: list[int]) -> int:
        """Keep the draft's prefix that matches the model's own picks, plus its next token; returns
        how many draft tokens were accepted."""
        accepted = 0
        while accepted < len(draft) and picks[accepted] == draft[accepted]:
            accepted += 1
        if accepted == 0:
            seq.spec_wait, seq.spec_backoff = seq.spec_backoff, min(SPEC_MAX_BACKOFF, seq.spec_backoff * 2)
        else:
            seq.spec_backoff = 1
        self.stats["decode_passes"] += 1
        self.stats["draft_tokens"] += len(draft)
        self.stats["accepted_draft_tokens"] += accepted
        for token in picks[:accepted + 1]:
            if seq.done or seq.aborted:
                break
            seq.fed += 1
            self._accept(seq, token)
        return accepted

    # ---- the fast lane ---------------------------------------------------------------------
    def _decode_fast(self) -> None:
        """Compiled passes: a lone greedy row with its draft; or every active row one token each,
        the first pass also taking the next chunk of a prompt still being prefilled."""
        threads = self.fast_lane_threads
        prompts = [seq for seq in self._active if seq.fed < len(seq.prompt_ids)]
        rows = [seq for seq in self._active if seq.fed >= len(seq.prompt_ids)]
        lone = rows[0] if len(rows) == 1 and not prompts else None
        if lone is not None and self.speculate and lone.params.temperature <= 0.0:
            room = min(lone.spec_len, self.max_context - lone.fed - 2, lone.params.max_new_tokens - lone.generated - 1)
            draft = ngram_draft(lone.history, room) if lone.spec_wait <= 0 else []
            if draft:
                count = len(draft) + 1
                logits = self._fast.forward([lone.id] * count, [lone.last_token, *draft],
                                            list(range(lone.fed, lone.fed + count)), [lone.slot] * count, threads)
                self.stats["fast_lane_passes"] += 1
                # Rejected positions stay in the lane's cache until the next pass overwrites them.
                accepted = self._take_draft(lone, draft, logits.argmax(dim=-1).tolist())
                lone.spec_len = min(FAST_MAX_DRAFT, lone.spec_len + 1) if accepted == len(draft) else max(1, accepted)
                return
            lone.spec_wait -= 1
        if prompts:
            shared = FAST_MAX_ROWS - FAST_PREFILL_MIN_ROWS  # decode rows that share the prompt's pass
            self._pass_with_prompt(prompts[0], rows[:shared], threads)
            rows = rows[shared:]
        for start in range(0, len(rows), FAST_MAX_ROWS):
            chunk = rows[start:start + FAST_MAX_ROWS]
            logits = self._fast.forward([seq.id for seq in chunk], [seq.last_token for seq in chunk],
                                        [seq.fed for seq in chunk], [seq.slot for seq in chunk], threads)
            self.stats["decode_passes"] += 1
            self.stats["fast_lane_passes"] += 1
            self._accept_rows(chunk, logits)

    def _pass_with_prompt(self, seq: _Sequence, rows: list[_Sequence], threads: int) -> None:
        """One pass: the next chunk of `seq`'s prompt (the pass's free rows), then one token of each
        of `rows`. Logits are computed for the decode rows and, when the chunk ends the prompt, for
        its last position, whose pick is the request's first token."""
        chunk = seq.prompt_ids[seq.fed:seq.fed + FAST_MAX_ROWS - len(rows)]
        ends = seq.fed + len(chunk) == len(seq.prompt_ids)
        first = len(chunk) - 1 if ends or not rows else len(chunk)  # the first row that gets logits
        logits = self._fast.forward([seq.id] * len(chunk) + [row.id for row in rows],
                                    chunk + [row.last_token for row in rows],
                                    list(range(seq.fed, seq.fed + len(chunk))) + [row.fed for row in rows],
                                    [seq.slot] * len(chunk) + [row.slot for row in rows], threads, logits_from=first)
        self.stats["prefill_passes"] += 1
        seq.fed += len(chunk)
        if rows:
            self.stats["decode_passes"] += 1
            self.stats["fast_lane_passes"] += 1
            self._accept_rows(rows, logits[len(chunk) - first:])
        if ends and not seq.aborted:
            self._accept(seq, sample_token(logits[0], seq.params, seq.generator))

    def _accept_rows(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Each row fed its last token; it gets the token sampled from its row of `logits`."""
        for i, seq in enumerate(rows):
            seq.fed += 1
            if not seq.aborted:
                self._accept(seq, sample_token(logits[i], seq.params, seq.generator))

    def _accept(self, seq: _Sequence, token: int) -> None:
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
        keep = [i for i, seq in enumerate(self._active) if not seq.done]
        if len(keep) != len(self._active):
            if self._fast is not None:
                for seq in self._active:
                    if seq.done:
                        self._fast.drop(seq.id)
            else:
                self._batch.keep_rows(keep)
            self._active = [self._active[i] for i in keep]

    def _finish(self, seq: _Sequence, reason: str, text: str = "") -> None:
        if seq.done:
            return
        seq.done = True
        if reason in ("stop", "length"):
            text += seq.tracker.flush()
        self._emit(seq, GenerationEvent(text=text, finish_reason=reason, prompt_tokens=len(seq.prompt_ids),
                                        completion_tokens=seq.generated))

    def _emit(self, seq: _Sequence, event: GenerationEvent) -> None:
        try:
            seq.on_event(event)
        except Exception:  # a broken consumer must not stop the batch
            log.exception("event consumer failed; aborting request %s", seq.id)
            seq.aborted = True
