"""Shared fixtures: a fresh TUNERY_HOME per test, a tiny Llama built on the spot, the real default model.

The tiny model (2 layers, hidden 64, a 512-token byte-level BPE with a ChatML template) is made
in a temporary folder with no network; the real model is converted once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The printer on floor three is offline again and the queue is stuck.",
    "Please reset my VPN token, I cannot log in from home since Monday.",
    "Outlook keeps crashing when I open shared calendars.",
    "{\"category\": \"network\", \"priority\": \"high\", \"team\": \"netops\", \"summary\": \"VPN down\"}",
    "You are a helpful assistant. Answer with JSON only.",
    "What is the capital of France? Paris is the capital of France.",
    "Part number TX-4410 is the replacement fan for the model 7 rack.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`",
]


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama and its tokenizer (safetensors) into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def session_models_dir(tmp_path_factory) -> Path:
    """Model cache shared by all tests of a session (set TUNERY_TEST_MODELS_DIR to keep it across runs)."""
    kept = os.environ.get("TUNERY_TEST_MODELS_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def tunery_home(tmp_path, session_models_dir, monkeypatch) -> Path:
    """Every test gets its own TUNERY_HOME; only the converted models are shared."""
    home = tmp_path / "tunery-home"
    home.mkdir()
    (home / "models").symlink_to(session_models_dir, target_is_directory=True)
    # The fast lane's compiled kernel is built once per machine, as for a user: once per session here.
    kernels = session_models_dir.parent / f"{session_models_dir.name}-kernels"
    kernels.mkdir(exist_ok=True)
    (home / "cache").mkdir()
    (home / "cache" / "kernels").symlink_to(kernels, target_is_directory=True)
    monkeypatch.setenv("TUNERY_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def default_model_dir(session_models_dir) -> Path:
    """The real SmolLM2-135M-Instruct as a safetensors folder (converted from GGUF once)."""
    os.environ.setdefault("TUNERY_HOME", str(session_models_dir.parent))
    from tunery.models.builtin import _convert_gguf_folder, builtin_gguf_path

    target = session_models_dir / "smollm2-135m-instruct"
    if not (target / "tunery-converted.json").is_file():
        _convert_gguf_folder(builtin_gguf_path("smollm2-135m-instruct"), target, show_progress=False)
    return target
