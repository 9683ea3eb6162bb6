"""`tunery.train(config) -> RunResult`: set up a run, call the loop, write the run directory.

Set-up order matters: config → data → `auto` values → resource preflight → model → loop, so a run
that cannot fit fails before anything large is loaded, and `auto` sees the real dataset size.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

import tunery
from tunery import host
from tunery.config import TrainConfig, dump_config, load_train_config, resolved
from tunery.data.chat_templates import apply_chat_template_override
from tunery.errors import ConfigError, TrainingError, TuneryError
from tunery.models import load_tokenizer, resolve_model, weights_sha256
from tunery.models.card import point_adapter_at_hub
from tunery.models.portable import make_folder_portable
from tunery.paths import check_name, runs_dir
from tunery.safeio import apply_umask
from tunery.training import checkpoints as ckpt
from tunery.training import resources
from tunery.training.auto import (
    AutoChoice,
    TrainingWork,
    augment_choice,
    is_fact_like,
    mean_trained_tokens,
    resolve_auto,
    resolve_beta,
    resolve_lora_layers,
    steps_per_epoch,
    total_steps,
    training_work,
)
from tunery.training.cpu_kernels import cpu_kernels
from tunery.training.distributed import setup_distributed
from tunery.training.dpo import make_dpo_setup
from tunery.training.fsdp import check_fsdp_config, gather_model_state, shard_model
from tunery.training.loop import FILLER_MULTIPLE, Trainer, TrainState, restore_training_checkpoint, train_loop
from tunery.training.optim import build_optimizer
from tunery.training.paraphrase import model_paraphraser
from tunery.training.precision import (
    Precision,
    choose_precision,
    limit_kernel_cache,
    measured_rate,
    set_threads,
)
from tunery.training.prefix import frozen_prefix
from tunery.training.progress import Reporter, make_reporter
from tunery.training.run_data import prepare_data
from tunery.training.rundir import OutputPlan, RunDir, plan_output_dir, publish_folder
from tunery.training.runlock import RunLock
from tunery.training.sinks import open_metric_sinks
from tunery.training.step_probe import measure_step_time
from tunery.training.trainable_model import load_for_training, trainable_parameters
from tunery.types import Conversation


@dataclass
class RunResult:
    """What a finished (or stopped) run left behind."""

    run_dir: Path
    status: str
    steps: int
    metrics: dict = field(default_factory=dict)
    adapter_path: Path | None = None
    model_path: Path | None = None
    resume_command: str | None = None


def train(config: TrainConfig | str | Path | None = None, *, resume: str | Path | None = None,
          overwrite: bool = False, train_conversations: Sequence[Conversation] | None = None,
          val_conversations: Sequence[Conversation] | None = None,
          quiet: bool = False, json_logs: bool = False, reporter: Reporter | None = None,
          on_event: Callable[[dict], None] | None = None) -> RunResult:
    """Train from a config (object or YAML path), or continue the run directory `resume`.

    A fresh run needs a new or empty `output_dir`; `overwrite` replaces an earlier run there (its own
    files only) or writes beside the user's files (never replacing one). The run directory is
    locked (`runlock.py`) while this runs, so a second trainer on it is refused.
    """
    dist = setup_distributed()
    reporter = reporter or (make_reporter(quiet=quiet, json_logs=json_logs) if dist.is_main else Reporter())
    run, config = open_run(config, resume)
    if not dist.is_main:  # rank 0 holds the lock and prepares the folder for all
        return run_training(run, config, resume=resume, plan=None, dist=dist, reporter=reporter,
                            train_conversations=train_conversations, val_conversations=val_conversations,
                            on_event=on_event)
    with RunLock(run.path):
        plan = None if resume is not None else plan_output_dir(run.path, overwrite=overwrite)
        described = plan.describe(run.path) if plan is not None else None
        if described:
            reporter.message(described)
        return run_training(run, config, resume=resume, plan=plan, dist=dist, reporter=reporter,
                            train_conversations=train_conversations, val_conversations=val_conversations,
                            on_event=on_event)


def run_training(run: RunDir, config: TrainConfig, *, resume, plan: OutputPlan | None, dist, reporter: Reporter,
                 train_conversations, val_conversations, on_event) -> RunResult:
    """Everything after the run directory is chosen (and locked): data, model, loop, outputs."""
    check_fsdp_config(config, dist)
    if dist.enabled:  # every process must write into rank 0's run directory (its name has a timestamp)
        run = RunDir(Path(dist.broadcast_text(str(run.path))))
        config = config.model_copy(update={"name": run.path.name, "output_dir": str(run.path)})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = set_threads(config.train.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if device == "cpu" else None
    if device == "cpu":
        limit_kernel_cache()
    source = resolve_model(config.init_from or config.base_model)
    num_params, model_config = resources.count_model_parameters(source.path)
    precision = run_precision(run, config, resume, device, model_config)
    tokenizer = load_tokenizer(source)
    apply_chat_template_override(tokenizer, config.data.chat_template)
    paraphrase = model_paraphraser(source, tokenizer, device) if config.data.augment == "model" else None
    data = prepare_data(config.data, tokenizer, seed=config.train.seed, train_conversations=train_conversations,
                        val_conversations=val_conversations, objective=config.objective,
                        base_model=config.base_model, augment=augments(config), paraphrase=paraphrase)
    trained_per_example = mean_trained_tokens(data.train)
    source_examples = len(data.train) - data.augmented
    choices = [augment_choice(data.augmented, source_examples)] if data.augmented else []
    settings, auto_choices = resolve_auto(config.train, num_examples=len(data.train), method=config.method,
                                          num_params=num_params, world_size=dist.world_size,
                                          mean_trained_tokens=trained_per_example, objective=config.objective,
                                          augmented_examples=data.augmented)
    choices += auto_choices
    settings, piece_choices = micro_batch_pieces(settings, config.train.model_fields_set, device, model_config,
                                                 precision.compute)
    choices += piece_choices
    beta, beta_choices = resolve_beta(config.dpo.beta)
    if config.objective == "dpo":
        choices += beta_choices
        config = config.model_copy(update={"dpo": config.dpo.model_copy(update={"beta": beta})})
    if config.init_from is None:  # a continued adapter keeps the layers it was trained on
        facts = config.objective == "sft" and is_fact_like(source_examples, trained_per_example)
        work = fact_work(config, settings, data.train, model_config, precision, device, dist.world_size) \
            if facts else None
        lora, layer_choices = resolve_lora_layers(config.lora, method=config.method,
                                                  num_layers=model_config.get("num_hidden_layers"),
                                                  facts=facts, work=work)
        choices += layer_choices
    else:
        lora = config.lora
    config = config.model_copy(update={"train": settings, "lora": lora})
    steps = total_steps(settings, len(data.train), dist.world_size)
    preflight(config, num_params, model_config, precision, run.path)

    torch.manual_seed(settings.seed)
    model, tokenizer = load_for_training(config, precision, device)
    params = trainable_parameters(model)
    dist.broadcast_params([p for _, p in params])
    dpo_setup = make_dpo_setup(model, beta=beta, method=config.method, sharded=settings.fsdp) \
        if config.objective == "dpo" else None
    if settings.fsdp:
        model = shard_model(model, dist, device)
        params = trainable_parameters(model)
    optimizer = build_optimizer(params, learning_rate=resolved(settings.learning_rate), weight_decay=settings.weight_decay)
    if dist.is_main:
        if plan is not None:
            plan.apply(run.path)
        run.create()
        run.config_path.write_text(dump_config(config), encoding="utf-8")
    events: list[dict] = []
    sinks = open_metric_sinks(config.logging, run.path, settings.model_dump(mode="json")) if dist.is_main else []

    def emit(event: dict) -> None:
        events.append(event)
        if dist.is_main:
            run.append_metric(event)
            reporter.event(event)
            for sink in sinks:
                if "step" in event and event.get("type") in ("train", "val"):
                    sink(event)
        if on_event is not None:
            on_event(event)

    passes = steps * resolved(settings.batch_size) * settings.grad_accum * dist.world_size / max(1, len(data.train))
    # DPO's reference passes run the same frozen layers on other inputs: nothing to reuse.
    prefix = None if dpo_setup else frozen_prefix(model, passes=passes, sharded=dist.sharded,
                                                  total_tokens=sum(len(e.input_ids) for e in data.train),
                                                  packing=config.data.packing)
    trainer = Trainer(model=model, optimizer=optimizer, params=params, settings=settings, data=data,
                      packing=config.data.packing, pad_token_id=tokenizer.pad_token_id,
                      autocast_dtype=precision.compute if precision.compute != torch.float32 else None,
                      device=device, total_steps=steps, checkpoints_dir=run.checkpoints_dir, dist=dist,
                      emit=emit, loss_impl=settings.loss_impl, prefix=prefix, dpo=dpo_setup,
                      phase=reporter.phase if dist.is_main else Trainer.phase,
                      row_multiple=FILLER_MULTIPLE if settings.kernels == "auto" and device == "cpu"
                      and precision.compute == torch.bfloat16 else 0)
    state = resume_state(trainer, run, reporter) if resume else TrainState()
    if resume and dist.is_main:  # the summary's first loss and speeds are the whole run's, not this session's
        events[:0] = run.read_metrics()
    if dist.is_main:
        run.update_run_json(
            status="running", name=run.path.name, method=config.method, objective=config.objective,
            base_model=config.base_model, dpo_beta=beta if dpo_setup else None,
            lineage={"base_model": source.base_ref or config.base_model, "init_from": config.init_from,
                     "base_weights_sha256": weights_sha256(source.path), "dataset_version": data.dataset_version,
                     "tunery_version": tunery.__version__, "torch_version": torch.__version__, "seed": settings.seed},
            hyperparameters=settings.model_dump(mode="json"), auto_choices=[asdict(c) for c in choices],
            precision=precision.to_dict(), threads=threads,
            world_size=dist.world_size, data=data.info, total_steps=steps, pid=os.getpid(),
            reused_frozen_layers=prefix.start if prefix else 0,
        )
    reporter.start({"name": run.path.name, "total_steps": steps, "start_step": state.step,
                    "settings": start_table(config, precision, choices, data.info, steps, threads, num_params, prefix,
                                            dist.world_size)})
    started = time.time()
    try:
        kernels = settings.kernels == "auto" and device == "cpu"
        reference = dpo_setup.reference if dpo_setup else None  # full DPO's frozen copy computes like the policy
        with cpu_kernels(model, optimizer, kernels), cpu_kernels(reference, None, kernels and reference is not None):
            status = train_loop(trainer, state)
    except TuneryError as exc:  # nan_loss, checkpoint_write_failed, ...: run.json says failed, with the code
        finish_failed(run, dist, reporter, state, exc)
        raise
    except Exception as exc:  # a fault of our own: run.json must not stay `running` either
        finish_failed(run, dist, reporter, state, TrainingError(f"{type(exc).__name__}: {exc}", code="internal_error"))
        raise
    result = RunResult(run_dir=run.path, status=status, steps=state.step,
                       metrics=final_metrics(state, events))
    if status == "completed":
        state_dict = gather_model_state(model) if dist.sharded else None
        if dist.is_main:
            reporter.phase("saving")
            result.adapter_path, result.model_path = export_outputs(run, model, tokenizer, config.method, state_dict,
                                                                    base_ref=source.base_ref or config.base_model)
    else:
        result.resume_command = f"tunery train --resume {shlex.quote(str(run.path))}"
    if dist.is_main:
        run.update_run_json(status=status, steps=state.step, metrics=result.metrics,
                            stopped_early=state.stopped_early, best_step=state.best_step,
                            timings={"train_s": round(state.train_time_s, 2), "wall_s": round(time.time() - started, 2)},
                            resume_command=result.resume_command,
                            adapter=str(result.adapter_path) if result.adapter_path else None,
                            model=str(result.model_path) if result.model_path else None)
        reporter.finish(summary(run, status, state, result))
    dist.barrier()
    return result


def fact_work(config: TrainConfig, settings, examples, model_config: dict, precision, device: str,
              world_size: int) -> TrainingWork | None:
    """What a LoRA run with `lora.layers: auto` would compute and how fast this machine multiplies, so `auto`
    can adapt more layers where they fit the facts' time budget (QLoRA's dequantizing is not estimated)."""
    if config.method != "lora" or config.lora.layers != "auto" or settings.fsdp:
        return None
    steps = total_steps(settings, len(examples), world_size)
    passes = steps * resolved(settings.batch_size) * settings.grad_accum * world_size / max(1, len(examples))
    rate = measured_rate(precision, device, mlp_shape(model_config))
    work = training_work(model_config, examples, passes=passes, flops_per_s=rate and rate * world_size)
    if work is None or device != "cpu" or config.method != "lora":
        return work
    per_step = resolved(settings.batch_size) * settings.grad_accum
    step = measure_step_time(model_config, lora=config.lora, precision=precision, examples_per_step=per_step,
                             tokens_per_example=round(work.tokens_per_pass / len(examples)),
                             trained_per_example=round(work.trained_tokens_per_pass / len(examples)),
                             kernels=settings.kernels == "auto")
    return replace(work, step_time=step, steps=steps, num_examples=len(examples)) if step else work


def run_precision(run: RunDir, config: TrainConfig, resume, device: str, model_config: dict) -> Precision:
    """The compute precision: `auto` measures once per run. A resumed run computes in the precision its first
    session chose (run.json), or its remaining steps would not be the ones an uninterrupted run takes (a
    measurement near the threshold can come out the other way on a busier machine)."""
    recorded = run.read_run_json().get("precision") or {} if resume and config.train.precision == "auto" else {}
    if recorded.get("compute") in ("bf16", "fp32"):
        chosen = choose_precision(recorded["compute"], config.method, device, mlp_shape(model_config))
        return replace(chosen, reason=f"resumed with the run's own choice ({recorded.get('reason', 'auto')})")
    return choose_precision(config.train.precision, config.method, device, mlp_shape(model_config))


def augments(config: TrainConfig) -> bool:
    """`data.augment: auto` rewords fact-like data when the passes are `auto` too: it spreads them over the
    wordings; a fixed `epochs` or `max_steps` keeps the data as written (the same steps, the same examples)."""
    return (config.data.augment != "none" and config.train.epochs == "auto" and config.train.max_steps is None
            and config.objective == "sft")


# A CPU step's time at the default model's size is mostly per-operation cost: every piece runs each layer's
# ~40 operations forward and backward. Pieces of up to 1024 tokens ran a helpdesk LoRA step (batch 4, ~840
# tokens) 1.2-1.35x faster than 256-token pieces in bf16 and 1.27x in fp32 (2 threads, idle Zen 4 EPYC), for
# ~0.55 GiB (bf16) or ~1.35 GiB (fp32) more peak memory. The pieces stay bounded so a larger model's
# activations do not grow with the micro-batch: the longest of these whose estimate fits the budget is taken.
CPU_PIECE_TOKENS = (1024, 512, 256)
PIECE_ACTIVATION_BUDGET = 2 << 30


def activation_bytes_per_token(model_config: dict, dtype: torch.dtype) -> int | None:
    """Training activations kept per token: about 16 hidden-wide and 4 MLP-wide values per layer (the default
    model measured 0.7 MB a token in bf16 and 1.77 MB in fp32, 30 layers of 576 and 1536)."""
    layers, hidden = model_config.get("num_hidden_layers"), model_config.get("hidden_size")
    if not (isinstance(layers, int) and isinstance(hidden, int) and layers > 0 and hidden > 0):
        return None
    intermediate = model_config.get("intermediate_size")
    if not (isinstance(intermediate, int) and intermediate > 0):
        intermediate = 4 * hidden
    return layers * (16 * hidden + 4 * intermediate) * dtype.itemsize


def micro_batch_pieces(settings, given: set[str], device: str, model_config: dict, dtype: torch.dtype):
    """How long the pieces a micro-batch is cut into are, unless `micro_batch_tokens` was set.

    On a GPU a micro-batch runs in one pass: short pieces only multiply the kernel launches there (an H200
    ran a 135M model's batch of 4 at 0.4x TRL's speed cut into 256-token pieces, the launches being the
    step's time). On a CPU: the longest of CPU_PIECE_TOKENS whose activations fit PIECE_ACTIVATION_BUDGET."""
    if "micro_batch_tokens" in given or settings.micro_batch_tokens == 0:
        return settings, []
    if device != "cpu":
        choice = AutoChoice("train.micro_batch_tokens", 0, "on a GPU: one pass per micro-batch (pieces only add "
                            "kernel launches); set it to cap activation memory")
        return settings.model_copy(update={"micro_batch_tokens": 0}), [choice]
    per_token = activation_bytes_per_token(model_config, dtype)
    if per_token is None:
        return settings, []
    tokens = next((t for t in CPU_PIECE_TOKENS if t * per_token <= PIECE_ACTIVATION_BUDGET), CPU_PIECE_TOKENS[-1])
    if tokens == settings.micro_batch_tokens:
        return settings, []
    choice = AutoChoice("train.micro_batch_tokens", tokens,
                        f"pieces of up to {tokens} tokens: fewer operations per step, activations about "
                        f"{tokens * per_token / 2**30:.1f} GiB (set it lower to save memory)")
    return settings.model_copy(update={"micro_batch_tokens": tokens}), [choice]


def mlp_shape(model_config: dict) -> tuple[int, int] | None:
    """(hidden, intermediate) size: where `precision: auto` measures bf16 against fp32."""
    hidden, intermediate = model_config.get("hidden_size"), model_config.get("intermediate_size")
    return (hidden, intermediate) if hidden and intermediate else None


def open_run(config, resume) -> tuple[RunDir, TrainConfig]:
    """The run directory and its config: a new one from `config`, or an existing one to resume."""
    if resume is not None:
        run = RunDir(Path(resume).expanduser().resolve())
        if not run.config_path.is_file():
            raise ConfigError(f"{run.path} is not a run directory (no config.yaml)",
                              hint="pass the folder `tunery train` printed at the start of the run")
        status = run.read_run_json().get("status")
        if status == "completed":
            raise ConfigError(f"run {run.path} has already completed", code="run_completed",
                              hint="start a new run with init_from: <run dir> to train further")
        return run, load_train_config(run.config_path)
    if config is None:
        raise ConfigError("no config given", hint="tunery train CONFIG.yaml, or tunery train --resume RUN_DIR")
    if not isinstance(config, TrainConfig):
        config = load_train_config(config)
    name = config.name or f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(name, "run name")
    path = Path(config.output_dir).expanduser().resolve() if config.output_dir else runs_dir() / name
    return RunDir(path), config.model_copy(update={"name": name, "output_dir": str(path)})


def preflight(config: TrainConfig, num_params: int, model_config: dict, precision, run_path: Path) -> None:
    weight_bytes = 2 if precision.weights == torch.bfloat16 else 4
    tokens = resolved(config.train.batch_size) * config.data.max_seq_len
    estimate = resources.estimate_memory(num_params, model_config, method=config.method, weight_bytes=weight_bytes,
                                         lora_rank=config.lora.rank, tokens_per_micro_batch=tokens,
                                         gradient_checkpointing=config.train.gradient_checkpointing)
    resources.check_memory(estimate, host.available_memory_bytes())
    trainable = num_params if config.method == "full" else estimate.trainable_bytes // 16
    resources.check_disk(run_path, resources.checkpoint_bytes(config.method, num_params, trainable,
                                                              config.train.keep_checkpoints))


def resume_state(trainer: Trainer, run: RunDir, reporter: Reporter) -> TrainState:
    """Clean partial checkpoints, pick the newest verified one, restore it; none means start over."""
    for path in ckpt.clean_partial_checkpoints(run.checkpoints_dir):
        reporter.message(f"removed partial checkpoint {path.name} (its write was interrupted)")
    checkpoint = ckpt.latest_valid_checkpoint(run.checkpoints_dir, warn=reporter.message)
    if checkpoint is None:
        reporter.message("no valid checkpoint: starting this run from step 0")
        run.drop_metrics_after(0)
        return TrainState()
    state = restore_training_checkpoint(trainer, checkpoint)
    if trainer.dist.is_main:
        run.drop_metrics_after(checkpoint.step)
    reporter.message(f"resuming from {checkpoint.path.name} (step {checkpoint.step})")
    return state


def export_outputs(run: RunDir, model, tokenizer, method: str,
                   state_dict: dict | None = None, base_ref: str | None = None) -> tuple[Path | None, Path | None]:
    """adapter/ (PEFT format) or model/ (HF safetensors), plus tokenizer and chat template.

    A sharded (FSDP2) model passes its gathered full `state_dict`: its own parameters are shards.
    """
    tokenizer.save_pretrained(run.path)
    make_folder_portable(run.path)
    if method == "full":
        def write_model(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            make_folder_portable(tmp)
            apply_umask(tmp)  # the weights readable like the rest of the run
        publish_folder(write_model, run.model_dir)
        return None, run.model_dir

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        point_adapter_at_hub(tmp, base_ref)
        apply_umask(tmp)
    publish_folder(write_adapter, run.adapter_dir)
    return run.adapter_dir, None


def finish_failed(run: RunDir, dist, reporter: Reporter, state: TrainState, exc: TuneryError) -> None:
    if dist.is_main:
        run.update_run_json(status="failed", error={"code": exc.code, "message": exc.message, "step": state.step + 1},
                            steps=state.step)
        reporter.finish({"name": run.path.name, "status": "failed",
                         "rows": {"error": exc.code, "step": state.step + 1, "run": str(run.path)}})


def final_metrics(state: TrainState, events: list[dict]) -> dict:
    train_losses = [e["loss"] for e in events if e.get("type") == "train"]
    speeds = [e["tokens_per_s"] for e in events if e.get("type") == "train"]
    metrics = {"train_loss": state.last_train_loss, "tokens_seen": state.tokens_seen,
               "trained_tokens_seen": state.trained_tokens_seen,
               "tokens_per_s": round(state.tokens_seen / state.train_time_s, 1) if state.train_time_s else None,
               "first_train_loss": train_losses[0] if train_losses else None,
               "median_step_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None}
    if state.initial_val:
        metrics["initial_val_loss"] = state.initial_val["val_loss"]
        if "val_reward_accuracy" in state.initial_val:
            metrics["initial_val_reward_accuracy"] = state.initial_val["val_reward_accuracy"]
    if state.last_val:
        metrics.update(state.last_val)
        metrics["best_val_loss"] = state.best_val_loss
    return metrics


def start_table(config, precision, choices, data_info, steps, threads, num_params, prefix=None,
                world_size: int = 1) -> dict:
    s = config.train
    method = config.method if config.objective == "sft" else f"{config.method}, dpo (beta {config.dpo.beta:g})"
    table = {"base model": f"{config.base_model} ({num_params / 1e6:.0f}M params)", "method": method,
             "examples": f"{data_info['train_examples']} train / {data_info['val_examples']} validation",
             "precision": f"{precision.name} ({precision.reason})", "threads": threads,
             "steps": planned_length(s, steps, data_info["train_examples"], world_size),
             "learning rate": f"{s.learning_rate:g} ({s.lr_schedule}, warmup {s.warmup_steps})"}
    for choice in choices:
        table[f"auto {choice.key}"] = f"{choice.value} ({choice.reason})"
    if prefix is not None:
        table["frozen layers"] = f"0-{prefix.start - 1}: run once per example, their output reused"
    return table


def planned_length(settings, steps: int, num_examples: int, world_size: int = 1) -> str:
    """What will run: steps and the epochs they make, after max_steps caps the epochs asked for."""
    epochs = steps / max(1, steps_per_epoch(settings, num_examples, world_size))  # an epoch's last step may be short
    line = f"{steps} steps = {epochs:.2f} epochs of {num_examples} examples (batch {settings.batch_size} x accum " \
           f"{settings.grad_accum}" + (f" x {world_size} processes)" if world_size > 1 else ")")
    if settings.max_steps is not None:
        line += f"; max_steps {settings.max_steps} caps epochs {settings.epochs}"
    return line


def summary(run: RunDir, status: str, state: TrainState, result: RunResult) -> dict:
    m = result.metrics
    rows = {"steps": state.step, "train loss (first → last)": f"{_fmt(m.get('first_train_loss'))} → {_fmt(m.get('train_loss'))}",
            "val loss (before → after)": f"{_fmt(m.get('initial_val_loss'))} → {_fmt(m.get('val_loss'))}",
            "tokens seen": state.tokens_seen, "tokens/s": m.get("tokens_per_s"),
            "train time": f"{state.train_time_s:.1f} s",
            "output": str(result.adapter_path or result.model_path or run.path)}
    if result.resume_command:
        rows["resume with"] = result.resume_command
    return {"name": run.path.name, "status": status, "rows": rows, "run_dir": str(run.path)}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
