"""Chat templating with loss masks: a conversation becomes token ids and labels.

The model's own chat template renders the scaffolding (role headers, end-of-turn markers);
message contents are tokenized separately with special-token parsing off, so text that looks
like a control token (`<|im_end|>`) stays literal text. Training, evaluation and serving all
encode through this module so they see the same tokens.
"""

from __future__ import annotations

import re

from tunery.data.tools import render_tool_messages
from tunery.errors import DataError
from tunery.types import Conversation, TokenizedExample

IGNORE_INDEX = -100  # the label of a token that is not trained (PyTorch cross-entropy's ignore_index)
_SENTINEL = "\ue000tunery{}\ue001"
_SENTINEL_RE = re.compile("\ue000tunery(\\d+)\ue001")
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def encode_conversation(tokenizer, conv: Conversation, max_seq_len: int | None = None) -> TokenizedExample:
    """Token ids and labels for one example; labels are -100 except trained assistant tokens.

    A trained assistant turn's label span is its content plus the template's end-of-turn token,
    so a tuned model learns to stop. `max_seq_len` truncates from the right and marks the
    example `meta["truncated"]`.
    """
    if conv.kind == "text":
        ids = encode_text(tokenizer, conv.text)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        example = TokenizedExample(ids, list(ids), conv.location)
    else:
        ids, labels = _encode_chat(tokenizer, conv.messages(), [t.train for t in conv.turns], False, conv,
                                   tools=list(conv.tools) or None, parallel=conv.parallel_tool_calls)
        example = TokenizedExample(ids, labels, conv.location)
    example.meta["num_tokens"] = len(example.input_ids)
    if max_seq_len is not None and len(example.input_ids) > max_seq_len:
        example.input_ids = example.input_ids[:max_seq_len]
        example.labels = example.labels[:max_seq_len]
        example.meta["truncated"] = True
    return example


def encode_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                  tools: list[dict] | None = None, parallel_tool_calls: bool = True) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant header when asked.

    `tools` are OpenAI function tools; messages may carry `tool_calls` and role `tool` (`tools.py`).
    """
    ids, _ = _encode_chat(tokenizer, messages, [False] * len(messages), add_generation_prompt, None,
                          tools=tools, parallel=parallel_tool_calls)
    return ids


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of literal text: special-token lookalikes are split into ordinary tokens."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the end-of-turn tokens the vocabulary knows: generation stops at any of them."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for tok_id in eos if isinstance(eos, list) else [eos]:
        if tok_id is not None and tok_id not in ids:
            ids.append(tok_id)
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        tok_id = vocab.get(token)
        if tok_id is not None and tok_id not in ids and token in _special_tokens(tokenizer):
            ids.append(tok_id)
    return ids


def _special_tokens(tokenizer) -> set[str]:
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
    return tokens


def _encode_chat(tokenizer, messages, train_flags, add_generation_prompt, conv, *, tools=None, parallel=True):
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template, so chat data cannot be rendered",
                        code="no_chat_template",
                        hint="use a text dataset ({\"text\": ...}) or a model that ships a chat template")
    rendered_messages, tools = render_tool_messages(tokenizer, messages, tools, parallel)
    # The Hermes form may put a system message in front: it is prompt, never trained.
    train_flags = [False] * (len(rendered_messages) - len(messages)) + list(train_flags)
    messages = rendered_messages
    # A message with no content (an assistant's tool calls, rendered by the template) has no
    # sentinel to find; it starts where the prompt up to it, with the assistant header, ends.
    placeholders = [{**m, "content": _SENTINEL.format(i)} if m.get("content") else {**m, "content": ""}
                    for i, m in enumerate(messages)]
    rendered = _render(tokenizer, placeholders, add_generation_prompt, tools, conv)
    marks = [(match.start(), match.end(), int(match.group(1))) for match in _SENTINEL_RE.finditer(rendered)]
    for index, message in enumerate(placeholders):
        if not message["content"] and train_flags[index]:
            prefix = _render(tokenizer, placeholders[:index], True, tools, conv)
            if not rendered.startswith(prefix):
                raise DataError(f"the chat template renders message {index} differently in a prompt, so tunery "
                                "cannot find its tool calls to train on", code="template_error")
            marks.append((len(prefix), len(prefix), index))
    marks.sort()
    special_ids = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    ids: list[int] = []
    labels: list[int] = []
    pending_stop = False  # after a trained turn, train on the scaffold up to its end-of-turn token
    seen: set[int] = set()
    pos = 0
    for start, end, index in marks:
        pending_stop = _append_scaffold(tokenizer, rendered[pos:start], ids, labels, special_ids, pending_stop)
        if index in seen:
            raise DataError("the chat template repeats a message; tunery cannot mask it", code="template_error")
        seen.add(index)
        content_ids = encode_text(tokenizer, messages[index]["content"]) if end > start else []
        trained = bool(train_flags[index])
        ids.extend(content_ids)
        labels.extend(content_ids if trained else [IGNORE_INDEX] * len(content_ids))
        pending_stop = trained
        pos = end
    _append_scaffold(tokenizer, rendered[pos:], ids, labels, special_ids, pending_stop)
    dropped = [i for i, flag in enumerate(train_flags) if flag and i not in seen]
    if dropped:
        raise DataError(f"the chat template dropped trained message {dropped[0]}", code="template_error")
    return ids, labels


def _render(tokenizer, messages, add_generation_prompt, tools, conv) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # a template may raise on role order (e.g. strict alternation)
        where = f" ({conv.location})" if conv is not None and conv.location else ""
        raise DataError(f"the chat template rejected this conversation{where}: {exc}",
                        code="template_error", hint="check the order of roles in the messages") from None


def _append_scaffold(tokenizer, text, ids, labels, special_ids, pending_stop) -> bool:
    if not text:
        return pending_stop
    seg_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    for tok_id in seg_ids:
        ids.append(tok_id)
        labels.append(tok_id if pending_stop else IGNORE_INDEX)
        if pending_stop and tok_id in special_ids:
            pending_stop = False
    return pending_stop
