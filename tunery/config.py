"""Typed, strict configuration: YAML files plus dotted `key=value` overrides.

Every field carries a description (it becomes `--help` text and docs/training.md). No torch here:
`auto` values stay as the string "auto" until `tunery.training.auto` resolves them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunery.errors import ConfigError
from tunery.safeio import read_text

Auto = Literal["auto"]
T = TypeVar("T")


def resolved(value: T | Auto) -> T:
    """`value` once `tunery.training.auto` has filled it in: an `auto` left here is a bug, not a user error."""
    if value == "auto":
        raise RuntimeError("an `auto` setting reached code that needs it resolved (call resolve_auto first)")
    return value


# Every number has its range here, in the model, so `config validate`, `train` and every later caller
# refuse the same values with the same message. NaN and infinities are refused everywhere.
PositiveCount = Annotated[int, Field(ge=1)]
NonNegativeCount = Annotated[int, Field(ge=0)]
PositiveRate = Annotated[float, Field(gt=0.0)]
SEED_MAX = 2**32 - 1  # what every seeded library (torch, numpy, random) accepts
# Step counts fit the job store's 32-bit step columns (PostgreSQL INTEGER); sizes stay allocatable.
MAX_STEPS = 1_000_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Which data trains the model and how examples become token sequences."""

    train: str | None = Field(None, description="Training data: a file (JSONL, JSON, CSV, Parquet) or a folder of text documents. Relative paths are relative to the config file.")
    validation: str | None = Field(None, description="Validation data. When absent, `val_fraction` of the training data is held out.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of training examples held out for validation when `validation` is not given (0 disables validation).")
    max_seq_len: int = Field(1024, gt=8, le=1_048_576, description="Maximum tokens per example; longer examples are handled by `too_long`.")
    packing: bool = Field(True, description="Concatenate the examples of a micro-batch into one row with per-example positions and no attention across examples (no padding compute).")
    too_long: Literal["truncate", "drop", "error"] = Field("truncate", description="What to do with an example longer than `max_seq_len`: cut it, skip it, or stop with an error naming it.")
    chat_template: str | None = Field(None, description="The chat template that renders chat data, instead of the model's own (for a base model without one, or a team's own format): a Jinja file (relative to the config file), the Jinja text inline, or `chatml`. Checked before training; the run saves it with its tokenizer, so evaluation, serving and exports of the run use it too.")
    rag: str | None = Field(None, description="Index folder from `tunery rag index`: each training question's prompt also holds the chunks retrieved for it and random distractor chunks (retrieval-aware fine-tuning, as in RAFT), so the model learns to answer from context; serve the result as RUN+rag:INDEX_DIR.")
    rag_k: int = Field(3, ge=1, le=50, description="With `rag`: chunks retrieved for each training question.")
    rag_distractors: int = Field(2, ge=0, le=50, description="With `rag`: random chunks added to each training prompt besides the retrieved ones.")
    augment: Literal["auto", "model", "none"] = Field("auto", description="Knowledge augmentation. `auto`: for fact-like data (short question/answer pairs, as `auto` hyperparameters detect it) each single-question example is also trained in up to 4 rewordings of its question (the trailing phrase moved to the front, embedded in a request, a keyword query, a casual form), with the same answer, so facts are recalled when asked another way; the passes per fact stay the same (fewer epochs), so only with `train.epochs: auto` and no `max_steps`; not with `rag`. `model`: as `auto`, plus the base model's own paraphrase of each question (greedy, shown three generic examples), kept only when it names every name, code and number the question names (so the answer and its key stay right) and changes at most a third of its other words (one, in a short question). `none`: the data as written.")


class LoraConfig(_Strict):
    """LoRA adapter shape (used by `method: lora` and `method: qlora`)."""

    rank: int = Field(16, gt=0, le=4096, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / rank).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` for every linear layer except the output head.")
    layers: PositiveCount | Literal["all", "auto"] = Field("auto", description="Which decoder layers get adapters: `all`, N (the top N layers only, at most the model's layer count, checked when the model is loaded), or `auto` (all; for short fact-like data with LoRA, the most top layers whose training this machine's measured matmul rate says fits about 8 minutes, at least the top third: every layer for a few dozen facts, the top third where only fp32 is fast, more where bf16 is several times faster). Frozen layers below the lowest adapted one need no backward pass, and when training lasts more than one epoch their output is computed once per example and reused.")
    use_dora: bool = Field(False, description="Use DoRA (weight-decomposed LoRA).")
    train_embeddings: bool = Field(False, description="Also train the token embeddings and output head (needed only when adding tokens).")


class TrainSettings(_Strict):
    """The optimisation loop: how long, how big, how fast to learn, when to evaluate and save."""

    epochs: PositiveCount | Auto = Field("auto", description="Passes over the training data (at least 1); `auto` picks from dataset size (more for small sets).")
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Stop after this many optimizer steps (overrides `epochs` when set).")
    batch_size: PositiveCount | Auto = Field("auto", description="Examples per micro-batch (per process, at least 1); `auto` picks from dataset size.")
    grad_accum: int = Field(1, gt=0, le=65_536, description="Micro-batches accumulated per optimizer step; the loss is normalised per trained token over all of them.")
    learning_rate: PositiveRate | Auto = Field("auto", description="Peak learning rate (above 0); `auto` picks from method and model size.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate decay after warmup.")
    warmup_steps: NonNegativeCount | Auto = Field("auto", description="Linear warmup steps (0 or more); `auto` is 5% of the total steps (at most 100).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the global gradient norm to this value (above 0; null disables clipping).")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed (0 to 2**32-1) for data order, initialisation and dropout; the same seed gives the same run.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="`auto`: bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AMX/AVX512-BF16), else fp32.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass to save memory (slower).")
    eval_every_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Validate every N optimizer steps (and always at the end); null: only at the end of each epoch.")
    save_every_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Write a checkpoint every N optimizer steps (and always at the end); null: at the end of each epoch.")
    keep_checkpoints: int = Field(2, ge=1, le=10_000, description="How many of the most recent checkpoints to keep (the best one is kept as well).")
    early_stopping_patience: int | None = Field(None, gt=0, le=1_000_000, description="Stop when validation loss has not improved for this many validations (null: never).")
    micro_batch_tokens: int = Field(256, ge=0, le=16_777_216, description="Process a micro-batch as consecutive pieces of at most this many tokens: the same update (the loss is normalised per step), less activation memory and shorter attention rows; 0 never splits. Left unset, a CPU run takes pieces of 1024 tokens where the model's activations for them fit in about 2 GiB (else 512, else 256; fewer, longer pieces mean fewer operations per step) and a GPU run never splits (pieces only add kernel launches there).")
    loss_impl: Literal["chunked", "reference"] = Field("chunked", description="`chunked`: cross-entropy from hidden states over trained tokens only, in chunks (no full-vocabulary logits); `reference`: the model's own loss over full logits.")
    kernels: Literal["auto", "reference"] = Field("auto", description="`auto`: on CPU, LoRA linears on a bf16 or fp32 base as one GEMM chain (in bf16 the adapter weights cast once per step; projections called on one input, such as q, k and v, as one group) and each packed example's attention on its own (bf16 batched products for examples of at most 512 tokens in a bf16 run, else torch's kernel in fp32), RMSNorms with frozen bf16 or fp32 weights as one function that keeps no fp32 copy of its input, and in a bf16 run packed rows and the output head's rows at multiples of 32 tokens (a filler example; fewer GEMM kernels built), all measured faster or smaller; `reference`: PEFT's and transformers' own computation.")
    threads: int | None = Field(None, gt=0, le=4096, description="CPU threads for torch (null: one per physical core).")
    fsdp: bool = Field(False, description="Under torchrun (2+ processes), shard full fine-tuning with FSDP2 (each decoder layer, then the root) instead of replicating it (DDP); checkpoints and model/ are gathered to rank 0 in the usual format. Refused for lora/qlora and in a single process.")


class DpoConfig(_Strict):
    """Preference tuning (`objective: dpo`): how far the tuned model may move from its reference."""

    beta: Annotated[float, Field(gt=0, le=100)] | Auto = Field("auto", description="DPO temperature beta: larger keeps the model closer to the reference; `auto` is 0.1.")


class LoggingConfig(_Strict):
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = Field(False, description="Also write TensorBoard event files (needs `tensorboard` installed).")
    mlflow: bool = Field(False, description="Also log to MLflow (needs `mlflow` installed; uses MLFLOW_TRACKING_URI).")


class TrainConfig(_Strict):
    """One training run: base model, method, data, and loop settings."""

    name: str | None = Field(None, description="Run name (letters, digits, `._-`); default: derived from the method and time.")
    base_model: str = Field("smollm2-135m-instruct", description="Model to adapt: built-in alias, local folder, .gguf file, hub id, or run directory.")
    method: Literal["full", "lora", "qlora"] = Field("lora", description="`full`: all weights train; `lora`: low-rank adapters; `qlora`: adapters on a 4-bit NF4 base. `method: dpo` is short for `objective: dpo` with LoRA.")
    objective: Literal["sft", "dpo"] = Field("sft", description="`sft`: learn the assistant answers (chat, instruction, prompt-completion, text data); `dpo`: Direct Preference Optimization on preference pairs (`input`, `preferred_output`, `non_preferred_output`). With adapters the reference is the base with the adapter switched off; full fine-tuning keeps a frozen copy.")
    init_from: str | None = Field(None, description="A previous run directory whose adapter or weights this run continues training.")
    output_dir: str | None = Field(None, description="Run directory to write; default TUNERY_HOME/runs/<name>.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset settings.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (ignored by `method: full`).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="DPO settings (used by `objective: dpo`).")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimisation loop settings.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Extra metric sinks.")

    @model_validator(mode="before")
    @classmethod
    def _method_dpo(cls, raw: Any) -> Any:
        # `method: dpo` (the OpenAI jobs API's name) reads as preference tuning with LoRA adapters.
        if isinstance(raw, dict) and raw.get("method") == "dpo":
            return {**raw, "method": "lora", "objective": "dpo"}
        return raw


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply `key=value` overrides, validate strictly."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        base_dir = path.resolve().parent
        raw = read_yaml_mapping(path)
    for item in overrides or []:
        apply_override(raw, item)
    config = validate_train_config(raw, source=source, yaml_path=path)
    return resolve_relative_paths(config, base_dir)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; YAML errors carry the line."""
    text = read_text(path, what="config file", error=ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one dotted `a.b.c=value` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE", hint="e.g. train.max_steps=30 method=qlora")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def validate_train_config(raw: dict[str, Any], *, source: str = "<config>", yaml_path: Path | None = None) -> TrainConfig:
    """Validate a raw mapping into a TrainConfig; the error names each bad key and the closest valid one."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(describe_error(err, source, yaml_path) for err in _one_per_key(exc.errors())))
        first = exc.errors()[0]
        hint = suggest_key(first["loc"]) if first["type"] == "extra_forbidden" else None
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(lines),
            code="invalid_config",
            hint=hint or "run `tunery config show` to list every key with its default",
        ) from None


def _one_per_key(errors: Iterable[Mapping[str, Any]]) -> list[dict]:
    # A union field (int | "auto") fails once per member: one message per key, naming every option.
    seen: dict[tuple, dict] = {}
    for err in errors:
        key = tuple(p for p in err["loc"] if not _is_union_tag(p))
        if key in seen and err["type"] != "extra_forbidden":
            seen[key] = {**seen[key], "msg": f"{seen[key]['msg']}, or {err['msg'][0].lower()}{err['msg'][1:]}"}
        else:
            seen.setdefault(key, dict(err))
    return list(seen.values())


def describe_error(err: dict, source: str, yaml_path: Path | None) -> str:
    loc = tuple(str(p) for p in err["loc"] if not _is_union_tag(p))
    key = ".".join(loc)
    line = find_yaml_line(yaml_path, loc) if yaml_path else None
    where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        suggestion = suggest_key(err["loc"])
        tail = f" ({suggestion})" if suggestion else ""
        return f"{where}: unknown key '{key}'{tail}"
    return f"{where}: {key}: {err['msg']} (got {err.get('input')!r})"


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member's type to the location ("int", "literal['auto']"); not a key.
    return isinstance(part, str) and (part in {"int", "float", "str", "list[str]", "bool"} or part.startswith(("literal[", "function-", "constrained-")))


# Names other tools use for the same setting; difflib alone cannot see that `lr` means learning_rate.
KEY_ALIASES = {"lr": "learning_rate", "bs": "batch_size", "num_epochs": "epochs", "num_train_epochs": "epochs",
               "gradient_accumulation_steps": "grad_accum", "per_device_train_batch_size": "batch_size",
               "r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
               "layers_to_transform": "layers",
               "model": "base_model", "dtype": "precision", "warmup": "warmup_steps", "scheduler": "lr_schedule"}


def suggest_key(loc: tuple) -> str | None:
    """`did you mean 'train.learning_rate'?` for a misspelt key, from the fields at that level."""
    parts = [str(p) for p in loc if not _is_union_tag(p)]
    model: type[BaseModel] = TrainConfig
    for part in parts[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    fields = list(model.model_fields)
    alias = KEY_ALIASES.get(parts[-1].lower())
    close = [alias] if alias in fields else difflib.get_close_matches(parts[-1], fields, n=1, cutoff=0.5)
    if not close:
        return None
    return "did you mean '" + ".".join([*parts[:-1], close[0]]) + "'?"


def find_yaml_line(path: Path, loc: tuple[str, ...]) -> int | None:
    """1-based line of the key at `loc` in a YAML file, or None when it is not there (an override)."""
    try:
        node = yaml.compose(read_text(path, error=ConfigError))
    except (ConfigError, yaml.YAMLError):
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            return line
        for key_node, value_node in node.value:
            if key_node.value == part:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            return None  # the key is not in the file: it came from an override
    return line


def resolve_relative_paths(config: TrainConfig, base_dir: Path) -> TrainConfig:
    """Make data paths absolute, relative to the config file's folder."""
    paths = ["train", "validation", "rag"]
    template = config.data.chat_template
    if template is not None and "{{" not in template and "{%" not in template and template != "chatml":
        paths.append("chat_template")  # a file, not inline Jinja or a known name
    data = config.data.model_copy(update={k: _absolute(getattr(config.data, k), base_dir) for k in paths})
    return config.model_copy(update={"data": data})


def _absolute(value: str | None, base_dir: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, every default filled in, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field; feeds docs/training.md."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_fields(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((f"{prefix}{name}", yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), field.description or ""))
    return rows


def render_config_reference() -> str:
    """Markdown table of every training config key (docs/training.md embeds this verbatim)."""
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default, description in describe_fields():
        lines.append(f"| `{key}` | `{default}` | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
