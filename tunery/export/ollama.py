"""The Ollama Modelfile beside a GGUF: a TEMPLATE and stop tokens that render conversations exactly as the
model's chat template does (as tunery trained and serves it).

The template is derived, not looked up: the chat template renders a probe conversation, the text around
each message gives each role's prefix and suffix, the generation prompt and any default system turn, and
those become a Go template. It is written only once it renders sample conversations identically to the
chat template (through `gotemplate`, as Ollama would); a chat template that is not a plain sequence of
turns (Llama 2's system folded into the first user turn, say) gets no TEMPLATE and a note instead.
Tool definitions and calls are not rendered: Ollama's JSON differs from the chat template's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunery.data.template import stop_token_ids
from tunery.export.gotemplate import render_go_template

ROLES = ("system", "user", "assistant")
_PROBE = [("system", "TUNERY-SYS-0"), ("user", "TUNERY-USER-1"), ("assistant", "TUNERY-ASSISTANT-2"),
          ("user", "TUNERY-USER-3"), ("assistant", "TUNERY-ASSISTANT-4")]
SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You triage helpdesk tickets."},
     {"role": "user", "content": "The VPN is down.\nSince 9:00."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello. {{ not a template }}"}, {"role": "user", "content": "Bye"}],
]


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as a sequence of turns: `prefix[role] + content + suffix[role]` per message."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str  # what starts the assistant's answer
    head: str  # text before the first turn when the conversation has a system message (BOS excluded)
    no_system_head: str  # text before the first user turn when it has none (a default system turn, say)
    default_system: str | None  # that default turn's content, when it is one: Ollama's SYSTEM


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template's text for `messages`, less a leading BOS that llama.cpp adds itself."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def adds_bos(tokenizer) -> bool:
    """Whether tokenizing adds BOS, as the GGUF's add_bos_token says and llama.cpp then does."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def derive_chat_format(tokenizer) -> ChatFormat | None:
    """The turns the chat template writes, read off probe renderings; None when it is not a sequence of turns."""
    try:
        full = render_chat(tokenizer, _messages(_PROBE), add_generation_prompt=False)
        four = render_chat(tokenizer, _messages(_PROBE[:4]), add_generation_prompt=False)
        prompt = render_chat(tokenizer, _messages(_PROBE[:4]), add_generation_prompt=True)
        no_system = render_chat(tokenizer, _messages(_PROBE[1:]), add_generation_prompt=False)
    except Exception:  # a template that refuses these roles or this order
        return None
    marks = [full.find(content) for _, content in _PROBE]
    if -1 in marks or marks != sorted(marks) or not prompt.startswith(four):
        return None
    gaps = [full[marks[i] + len(_PROBE[i][1]):marks[i + 1]] for i in range(4)]
    suffix = {"assistant": full[marks[4] + len(_PROBE[4][1]):], "user": four[four.find(_PROBE[3][1]) + len(_PROBE[3][1]):]}
    if not gaps[2].startswith(suffix["assistant"]) or not gaps[1].startswith(suffix["user"]):
        return None
    prefix = {"user": gaps[2][len(suffix["assistant"]):], "assistant": gaps[1][len(suffix["user"]):]}
    if not prefix["user"] or not gaps[0].endswith(prefix["user"]) or gaps[3] != suffix["user"] + prefix["assistant"]:
        return None
    suffix["system"] = gaps[0][:len(gaps[0]) - len(prefix["user"])]
    head = full[:marks[0]]
    first_user = no_system.find(_PROBE[1][1])
    if first_user < 0 or not no_system[:first_user].endswith(prefix["user"]):
        return None
    no_system_head = no_system[:first_user - len(prefix["user"])]
    prefix["system"], head = _split_system_prefix(head, prefix)
    default = None
    if no_system_head.startswith(head + prefix["system"]) and no_system_head.endswith(suffix["system"]):
        default = no_system_head[len(head + prefix["system"]):len(no_system_head) - len(suffix["system"])] or None
    return ChatFormat(prefix=prefix, suffix=suffix, generation=prompt[len(four):], head=head,
                      no_system_head=no_system_head, default_system=default)


def _split_system_prefix(head: str, prefix: dict[str, str]) -> tuple[str, str]:
    """(system prefix, text before every conversation): a system turn's prefix is the user's with the role
    name changed when the template writes roles by name (`<|im_start|>user` -> `<|im_start|>system`)."""
    guess = prefix["user"].replace("user", "system")
    if guess != prefix["user"] and head.endswith(guess):
        return guess, head[:len(head) - len(guess)]
    return head, ""


def go_template(chat: ChatFormat) -> str:
    """The Ollama TEMPLATE that writes `chat`'s turns over `.Messages` (which holds the system message)."""
    def literal(text: str) -> str:  # Go template text cannot hold "{{" literally
        return text.replace("{{", '{{ "{{" }}')

    turns = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{literal(chat.prefix[role])}{{{{ .Content }}}}'
        f'{literal(chat.suffix[role])}' for i, role in enumerate(ROLES))
    no_system = literal(chat.no_system_head) if chat.default_system is None else ""
    opening = literal(chat.head)
    if no_system != opening:  # text that depends on whether the conversation opens with a system message
        first_is_system = '(and .Messages (eq (index .Messages 0).Role "system"))'
        opening = f"{{{{ if {first_is_system} }}}}{opening}{{{{ else }}}}{no_system}{{{{ end }}}}"
    return f"{opening}{{{{ range .Messages }}}}{turns}{{{{ end }}}}{{{{ end }}}}{literal(chat.generation)}"


def ollama_values(messages: list[dict], system: str | None) -> dict:
    """What Ollama hands a TEMPLATE for a chat: SYSTEM first unless the request has a system message,
    consecutive messages of one role (tool results aside) merged with a blank line, as its server does."""
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"] and message["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    systems = [m["content"] for m in messages if m["role"] == "system"]
    return {"Messages": collated, "System": "\n\n".join(systems), "Tools": None, "Response": ""}


def verified_template(tokenizer) -> tuple[str, ChatFormat] | None:
    """(TEMPLATE, its turns) when the derived template renders every sample conversation as the chat template."""
    chat = derive_chat_format(tokenizer)
    if chat is None:
        return None
    template = go_template(chat)
    for messages in SAMPLE_CONVERSATIONS:
        try:
            expected = render_chat(tokenizer, messages)
        except Exception:  # the chat template refuses a sample (its own checks): no template is better than a guess
            return None
        if render_go_template(template, ollama_values(messages, chat.default_system)) != expected:
            return None
    return template, chat


def stop_strings(tokenizer, chat: ChatFormat | None) -> list[str]:
    """EOS and the end-of-turn tokens, and the text that ends an assistant turn in this template."""
    stops = [tokenizer.convert_ids_to_tokens(token_id) for token_id in stop_token_ids(tokenizer)]
    end_of_turn = chat.suffix["assistant"].strip() if chat is not None else ""
    if end_of_turn and end_of_turn not in stops:
        stops.append(end_of_turn)
    return stops


def modelfile_text(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile: the chat template's turns and default system prompt, its stop tokens, greedy."""
    lines = [f"FROM ./{gguf_name}"]
    verified = verified_template(tokenizer)
    chat = verified[1] if verified is not None else None
    if verified is not None and chat is not None:
        lines.append(f'TEMPLATE """{verified[0]}"""')
        if chat.default_system:  # Ollama adds SYSTEM as the first message when a request has no system message
            lines.append(f'SYSTEM """{chat.default_system}"""')
    else:
        lines.append("# This chat template is not a plain sequence of turns, so no TEMPLATE is written here:")
        lines.append("# Ollama picks the closest of its own templates to the GGUF's tokenizer.chat_template.")
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_strings(tokenizer, chat)]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def _messages(pairs) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]
