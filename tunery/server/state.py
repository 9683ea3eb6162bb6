"""What a running server holds: the engine over the base model, its adapters, and the store.

Adapters come only from run directories the server knows: those configured at start and runs
under `TUNERY_HOME/runs` named by a checked identifier. A request never supplies a path.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.errors import ConfigError, ModelError, NotFoundError, TuneryError
from tunery.inference.loaded_engine import load_engine
from tunery.models import resolve_model
from tunery.paths import check_name, runs_dir
from tunery.platform.models import find_fine_tuned
from tunery.platform.registry import parse_ref, resolve_version
from tunery.rag import Retriever
from tunery.rag.manifest import MANIFEST
from tunery.server.settings import ServerSettings
from tunery.store import Store, open_store
from tunery.store.owners import Actor

if TYPE_CHECKING:  # the engine and the tokenizer load torch
    from transformers import PreTrainedTokenizerBase

    from tunery.inference.engine import Engine
    from tunery.platform.metrics import ServerMetrics

log = logging.getLogger("tunery.server")


@dataclass
class ServerState:
    settings: ServerSettings
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    store: Store
    base_name: str
    base_path: Path
    configured_runs: dict[str, Path]
    started_at: int = field(default_factory=lambda: int(time.time()))
    adapter_created: dict[str, int] = field(default_factory=dict)
    weights_summary: str = "weights: full precision"  # the --weights choice and its reconstruction error
    decode_summary: str = ""  # which path decode steps take (the fast lane or the torch model)
    retrievers: dict[str, Retriever] = field(default_factory=dict)  # served name -> its index
    retriever_stamps: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)  # its manifest, when opened
    metrics: ServerMetrics = field(init=False)  # set by create_app, over the store and the engine

    def retriever_for(self, name: str) -> Retriever | None:
        """The index `name` answers from; opened again when its folder was rebuilt since (`tunery rag index
        --out` on the same folder swaps in a new manifest). A rebuild that cannot be opened, or no longer fits
        the served tokenizer, is logged and the index already open keeps answering."""
        retriever = self.retrievers.get(name)
        if retriever is None:
            return None
        stamp = manifest_stamp(retriever.index.path)
        if stamp is None or stamp == self.retriever_stamps.get(name):  # unchanged, or mid-swap: keep what is open
            return retriever
        self.retriever_stamps[name] = stamp  # tried once per rebuild, not on every request
        try:
            fresh = Retriever.open(retriever.index.path)  # as attach_retrievers opens it: the new manifest's depth
            fresh.index.check_model(self.tokenizer, self.settings.model)
        except Exception as exc:  # noqa: BLE001 (a bad rebuild must not fail requests the open index can answer)
            what = f"{exc.code}: {exc.message}" if isinstance(exc, TuneryError) else f"{type(exc).__name__}: {exc}"
            log.warning("the index of %s at %s changed and cannot be used (%s); still answering from the one "
                        "opened before", name, retriever.index.path, what)
            return retriever
        log.info("the index of %s at %s was rebuilt: answering from the new one", name, retriever.index.path)
        self.retrievers[name] = fresh
        return fresh

    def model_names(self) -> list[str]:
        return [self.base_name, *self.engine.adapter_names()]

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's `model` names (None for the base); unknown names are NotFound."""
        if model == self.base_name:
            return None
        if model in self.engine.adapter_names():
            return model
        raise NotFoundError("the requested model does not exist", code="model_not_found",
                            hint="GET /v1/models lists the models this server serves")

    def fine_tunable_models(self) -> dict[str, str]:
        """Base models a job may name here: the served base (jobs' adapters must fit it)."""
        return {self.base_name: self.settings.model}

    def use_fine_tuned(self, model: str, caller) -> None:
        """Load an `ft:` model the caller may use on first use (the engine keeps the most recent ones)."""
        if not model.startswith("ft:"):
            return
        found = find_fine_tuned(self.store, Actor(caller.key_id, caller.admin), model)
        if found.base != self.base_name:
            raise ModelError(f"{model} was trained on {found.base!r}, and this server serves {self.base_name!r}",
                             code="adapter_mismatch", hint="serve its base model to use it")
        if model not in self.engine.adapter_names():
            self.engine.load_adapter(model, found.adapter_dir)
            self.adapter_created[model] = found.created

    def use_registered(self, model: str) -> str:
        """A registry reference (NAME, NAME@N, NAME@ALIAS) becomes the exact version NAME@N, loaded,
        with the index registered with it (if any) opened for its answers.

        Read from the store on every request, so a promotion or rollback reaches every running server
        at its next request; requests already running keep the version they started with (it stays
        loaded until the adapter cap drops it). Other names come back unchanged.
        """
        if model == self.base_name or model.startswith("ft:") or model in self.configured_runs:
            return model
        try:
            parse_ref(model)
            version = resolve_version(self.store, model)
        except (ConfigError, NotFoundError):
            return model  # not a registry name: the usual lookup answers (404 for unknown names)
        if version.ref not in self.engine.adapter_names():
            resolved = resolve_model(version.run_dir)
            if resolved.adapter_path is None or Path(resolved.path).resolve() != self.base_path.resolve():
                raise ModelError(f"{version.ref} was trained on {version.base_model!r}, and this server serves "
                                 f"{self.base_name!r}", code="adapter_mismatch", hint="serve its base model to use it")
            self.engine.load_adapter(version.ref, resolved.adapter_path)
            self.adapter_created[version.ref] = int(time.time())
        if version.rag_index and version.ref not in self.retrievers:
            attach_retrievers(self, {version.ref: version.rag_index})
        return version.ref

    def find_run(self, run: str) -> Path:
        """A run directory the server knows: configured at start, or a named run under runs_dir()."""
        for configured in self.configured_runs.values():
            if run == str(configured) or run in (configured.name,):
                return configured
        unknown = NotFoundError("that run is not known to this server",
                                hint="pass a run name under TUNERY_HOME/runs or one configured with --adapter")
        try:
            check_name(run, "run name")
        except ConfigError:
            raise unknown from None
        path = runs_dir() / run
        if not (path / "run.json").is_file():
            raise unknown
        return path

    def load_adapter(self, name: str, run_dir: Path) -> None:
        """Check the run (completed, an adapter, trained on our base) and load it under `name`."""
        check_name(name, "adapter name")
        if name == self.base_name:
            raise ConfigError("the adapter name is the base model's name", hint="pick another adapter name")
        status = _run_status(run_dir)
        if status not in (None, "completed"):
            raise ConfigError(f"the run is {status}, not completed", code="run_incomplete")
        resolved = resolve_model(run_dir)
        if resolved.adapter_path is None:
            raise ConfigError("the run holds a full model, not an adapter",
                              hint="serve a fully fine-tuned run with `tunery serve --model RUN_DIR`")
        if Path(resolved.path).resolve() != self.base_path.resolve():
            raise ModelError(f"the run was trained on another base model than {self.base_name!r}",
                             code="adapter_mismatch")
        self.engine.load_adapter(name, resolved.adapter_path)
        self.adapter_created[name] = int(time.time())


def _run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        raise ModelError("the run has no readable run.json", code="bad_run_dir") from None


def default_served_name(resolved) -> str:
    if resolved.kind == "builtin":
        return resolved.ref.partition("+rag:")[0]
    source = resolved.run_dir or Path(resolved.ref)
    name = Path(source).name
    if resolved.gguf_file and not resolved.run_dir:
        name = Path(resolved.gguf_file).stem
    return check_name(name, "served model name")


def build_state(settings: ServerSettings) -> ServerState:
    """Load the base model (and configured adapters), start the engine, open the store."""
    settings.check_exposure()
    # Every new prompt length is a new GEMM shape: over 300 prompt lengths (default model, bf16, torch path)
    # RSS reached 2.44 GiB with oneDNN's default cache of 1024 primitives and 1.74 GiB with 128, at the same speed.
    from tunery.training.precision import limit_kernel_cache  # loads torch, as the engine does next

    limit_kernel_cache()
    loaded = load_engine(settings.model, dtype=settings.dtype, weights=settings.weights,
                         decode=settings.decode, max_batch_size=settings.max_batch_size, max_adapters=settings.max_adapters)
    resolved = loaded.resolved
    if settings.served_name:
        base_name = check_name(settings.served_name, "served model name")
    elif loaded.adapter:  # --model RUN_DIR of a LoRA run: the base keeps its own name, the run its folder's
        base_name = check_name(Path(str(resolved.base_ref)).name, "served model name")
    else:
        base_name = default_served_name(resolved)
    configured = {check_name(name, "adapter name"): Path(run).expanduser().resolve()
                  for name, run in settings.adapters.items()}
    state = ServerState(settings=settings, engine=loaded.engine, tokenizer=loaded.tokenizer,
                        store=open_store(settings.database), base_name=base_name,
                        base_path=Path(resolved.path), configured_runs=configured,
                        weights_summary=loaded.quantization.summary(), decode_summary=loaded.decode_summary)
    if loaded.adapter and resolved.run_dir is not None:  # loaded.adapter comes from a run directory
        state.configured_runs.setdefault(loaded.adapter, resolved.run_dir)
        state.adapter_created[loaded.adapter] = state.started_at
    for name, run_dir in state.configured_runs.items():
        if name not in loaded.engine.adapter_names():
            state.load_adapter(name, run_dir)
    attach_retrievers(state, {**({loaded.adapter or base_name: str(resolved.rag_index)} if resolved.rag_index
                                 else {}), **settings.rag})
    loaded.engine.start()
    return state


def attach_retrievers(state: ServerState, indexes: dict[str, str]) -> None:
    """Open each index for the served model it belongs to; its chunks must fit that model's tokenizer."""
    for name, index_dir in indexes.items():
        if name not in state.model_names():
            raise ConfigError(f"--rag {name}={index_dir}: no served model is named {name!r}", code="invalid_option",
                              hint=f"served models: {', '.join(state.model_names())}")
        stamp = manifest_stamp(Path(index_dir).expanduser())
        retriever = Retriever.open(index_dir)
        retriever.index.check_model(state.tokenizer, state.settings.model)  # the rebuild hint's --model: the base
        state.retrievers[name] = retriever
        state.retriever_stamps[name] = stamp


def manifest_stamp(index_dir: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of an index's manifest, None while there is none: a rebuild renames a new folder in."""
    try:
        info = (index_dir / MANIFEST).stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns
