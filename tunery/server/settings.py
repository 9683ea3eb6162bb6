"""Server settings: one strict model, filled from `tunery serve` flags (or built in tests)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="Base model reference: built-in alias, folder, .gguf or run directory.")
    served_name: str | None = Field(None, description="Name clients use for the base model (default: the alias or folder name).")
    adapters: dict[str, str] = Field(default_factory=dict, description="Adapters to load at start: NAME -> run directory.")
    rag: dict[str, str] = Field(default_factory=dict, description="Retrieval: served model NAME (the base or an adapter) -> index folder its answers retrieve from.")
    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback exposes the server to the network.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    no_auth: bool = Field(False, description="Serve without API keys; refused unless bound to loopback.")
    no_log: bool = Field(False, description="Do not log requests and answers (feedback then has nothing to refer to).")
    redact_logs: bool = Field(False, description="Scrub personal data and secrets (e-mails, phones, cards, IBANs, IPs, SSNs, keys) from logged requests and answers before they are stored.")
    pii_patterns: Path | None = Field(None, description="YAML file of extra patterns to scrub (`patterns: {NAME: REGEX}`), used with redact_logs.")
    log_retention_days: float | None = Field(None, gt=0, description="Delete logged requests older than this many days.")
    database: Path | str | None = Field(None, description="SQLite file or database URL for keys, logs, feedback, files and jobs (default TUNERY_DATABASE_URL, else TUNERY_HOME/tunery.db).")
    dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="Weights precision; auto picks bf16 where it is fast.")
    weights: Literal["full", "int8", "int4"] = Field("full", description="Served weights: full precision (what was "
                                                     "evaluated), int8 per channel, or int4 decoder + int8 head (CPU only, fastest).")
    decode: Literal["auto", "torch", "lane"] = Field("auto", description="Decode backend: auto (the compiled fast "
                                                     "lane where it applies, else torch), torch, or lane (refused where it does not apply).")
    max_batch_size: int = Field(16, ge=1, le=256, description="Most requests decoded together in one step.")
    max_adapters: int = Field(8, ge=1, le=1024, description="Most adapters held in memory; the least recently used is dropped.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request gives none (capped by the context left).")
    max_n: int = Field(8, ge=1, le=64, description="Largest `n` (choices per request) accepted.")
    max_stop: int = Field(4, ge=0, le=64, description="Most stop strings per request.")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop string accepted, in characters.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted, in bytes.")
    max_upload_mb: float = Field(512, gt=0, description="Largest file accepted by POST /v1/files, in MB (checked while it streams).")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def check_exposure(self) -> None:
        """Refuse `no_auth` on any address other than loopback."""
        if self.no_auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth is only allowed on a loopback address, not {self.host}",
                              hint="create a key with `tunery keys create` and drop --no-auth, or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
