"""What a fine-tuning job asks for: OpenAI's create fields checked strictly, and the `tunery train`
config they become (OpenAI's hyperparameters mapped onto tunery's, `tunery: {...}` merged in and
checked by the same strict config as `tunery train`, closest-key hints included).

Knows no HTTP and no database; `tunery.platform.jobs` calls it at create time and again in the
worker, so a job that was accepted builds the same config when it runs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunery.config import TrainConfig, validate_train_config
from tunery.data.chat_templates import is_template_path
from tunery.data.formats import detect_format
from tunery.errors import ConfigError

SUFFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # fullmatch: `$` would pass "suffix\n"
# Set by the job itself; a `tunery` block may not move them.
RESERVED_KEYS = {("name",), ("base_model",), ("output_dir",), ("init_from",), ("data", "train"),
                 ("data", "validation")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true is not 1 epoch, "7" not a seed


class Hyperparameters(_Strict):
    n_epochs: int | Literal["auto"] = Field("auto", description="Passes over the training data (1-50).")
    batch_size: int | Literal["auto"] = Field("auto", description="Examples per step (1-256).")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="Scales tunery's automatic learning rate (0 < x <= 10).")
    beta: float | Literal["auto"] | None = Field(None, description="DPO only: strength of the preference loss.")

    def model_post_init(self, _context) -> None:
        checks = (("n_epochs", self.n_epochs, 1, 50), ("batch_size", self.batch_size, 1, 256),
                  ("learning_rate_multiplier", self.learning_rate_multiplier, 1e-6, 10.0))
        for name, value, low, high in checks:
            if value != "auto" and not (low <= value <= high):
                raise ValueError(f"{name} must be 'auto' or between {low:g} and {high:g}, got {value!r}")


class MethodParameters(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Strict):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: MethodParameters | None = None
    dpo: MethodParameters | None = None


class JobRequest(_Strict):
    """`POST /v1/fine_tuning/jobs`: OpenAI's fields, plus tunery's own settings under `tunery`."""

    model: str = Field(..., min_length=1, max_length=256)
    training_file: str = Field(..., min_length=1, max_length=128)
    validation_file: str | None = Field(None, max_length=128)
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # the older top-level form
    integrations: list | None = None
    tunery: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, _context) -> None:
        if self.suffix is not None and not SUFFIX_PATTERN.fullmatch(self.suffix):
            raise ValueError("suffix must be 1-64 letters, digits, '-' or '_' (no '/', '.' or ':')")
        if self.metadata is not None:
            if len(self.metadata) > 16:
                raise ValueError("metadata holds at most 16 keys")
            for key, value in self.metadata.items():
                if not key or len(key) > 64 or len(value) > 512 or '"' in key or "\\" in key:
                    raise ValueError("metadata keys are 1-64 characters (no quotes), values at most 512")
        if self.integrations:
            raise ValueError("integrations are not supported; tunery sends webhooks (serve --webhook)")

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    @property
    def hyper(self) -> Hyperparameters:
        chosen = getattr(self.method, self.method.type) if self.method else None
        if chosen is not None:
            return chosen.hyperparameters
        return self.hyperparameters or Hyperparameters()


def parse_job_request(body: dict) -> JobRequest:
    """Validate a create body; the error names the field (`param`) and what is wrong."""
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object", code="invalid_request")
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("literal[", "function-")))
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        error = ConfigError(f"{param}: {message}" if param else message, code="invalid_request")
        error.param = param or None
        raise error from None
    return request


def check_file_fits_method(request: JobRequest, train_path: Path, filename: str) -> None:
    """`dpo` trains on preference pairs only, `supervised` on anything else: refused at create, not at run."""
    with open(train_path, encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "{}")
    try:
        keys = set(json.loads(first))
    except (ValueError, TypeError):
        return  # not JSONL: the file checks already had their say
    fmt = detect_format(keys)[0]
    if (fmt == "preference") == (request.method_type == "dpo"):
        return
    if request.method_type == "dpo":
        message = (f"method 'dpo' needs a preference file (input, preferred_output, non_preferred_output); "
                   f"{filename} is in the {fmt} format")
    else:
        message = f"{filename} holds preference pairs: use method type 'dpo' for it"
    error = ConfigError(message, code="invalid_training_file_for_method")
    error.param = "training_file"
    raise error


def build_config(request: JobRequest, *, job_id: str, base_ref: str, train_path: Path,
                 validation_path: Path | None, run_dir: Path, learning_rate: float | None = None,
                 init_from: str | None = None) -> TrainConfig:
    """The `tunery train` config of a job; unknown `tunery` keys fail with the closest valid key."""
    raw = copy.deepcopy(request.tunery)
    for key in RESERVED_KEYS:
        node: Any = raw
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            error = ConfigError(f"tunery.{'.'.join(key)} is set by the job itself", code="invalid_request",
                                hint="use the job's model, training_file and validation_file fields")
            error.param = "tunery." + ".".join(key)
            raise error
    raw.update(name=job_id, base_model=base_ref, output_dir=str(run_dir))
    if init_from:
        raw["init_from"] = init_from
    if request.method_type == "dpo":
        raw["objective"] = "dpo"
        beta = request.hyper.beta
        if beta not in (None, "auto"):
            raw.setdefault("dpo", {})["beta"] = beta
    data = raw.setdefault("data", {}) if isinstance(raw.get("data", {}), dict) else raw["data"]
    if isinstance(data, dict) and isinstance(data.get("chat_template"), str) and is_template_path(data["chat_template"]):
        error = ConfigError("tunery.data.chat_template names a file; a job's template is inline Jinja or a known name",
                            code="invalid_request", hint="put the template's text in the field")
        error.param = "tunery.data.chat_template"
        raise error
    if isinstance(data, dict) and data.get("rag") is not None:  # a folder on the server: another key's documents
        error = ConfigError("tunery.data.rag names an index folder on the server; a job cannot train on one",
                            code="invalid_request",
                            hint="train retrieval-aware models with `tunery train` and data.rag where the index is")
        error.param = "tunery.data.rag"
        raise error
    if isinstance(data, dict):
        data["train"] = str(train_path)
        if validation_path is not None:
            data["validation"] = str(validation_path)
    train = raw.setdefault("train", {}) if isinstance(raw.get("train", {}), dict) else raw["train"]
    if isinstance(train, dict):
        hyper = request.hyper
        if hyper.n_epochs != "auto":
            train["epochs"] = hyper.n_epochs
        if hyper.batch_size != "auto":
            train["batch_size"] = hyper.batch_size
        if learning_rate is not None:
            train["learning_rate"] = learning_rate
        if request.seed is not None:
            train["seed"] = request.seed
    try:
        return validate_train_config(raw, source="tunery")
    except ConfigError as exc:
        exc.param = "tunery"
        raise
