"""The chat template a config names (`data.chat_template`): a known name, a Jinja file, or inline Jinja,
checked once and set on the tokenizer, so training, the run's saved tokenizer and everything that
reads the run (evaluation, serving, exports) render with it. Knows templates, not configs or runs.
"""

from __future__ import annotations

from pathlib import Path

from tunery.errors import ConfigError
from tunery.safeio import read_text

# ChatML as SmolLM2, Qwen and Hermes write it, with no default system prompt.
KNOWN_TEMPLATES = {
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
               "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}"),
}
_PROBE = [{"role": "system", "content": "probe system"}, {"role": "user", "content": "probe question"},
          {"role": "assistant", "content": "probe answer"}]


def is_inline_template(value: str) -> bool:
    """Inline Jinja rather than a name or a path: it holds a Jinja tag."""
    return "{{" in value or "{%" in value


def is_template_path(value: str) -> bool:
    """A file path (resolved relative to the config file), not a known name or inline Jinja."""
    return not is_inline_template(value) and value not in KNOWN_TEMPLATES


def load_chat_template(value: str) -> str:
    """The template text `value` names, checked: it compiles and renders a conversation's contents."""
    if value in KNOWN_TEMPLATES:
        return KNOWN_TEMPLATES[value]
    if is_inline_template(value):
        text, origin = value, "the inline data.chat_template"
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.chat_template: {value!r} is neither a file, a known name nor inline Jinja",
                              code="invalid_chat_template",
                              hint=f"give a .jinja file, inline Jinja, or one of: {', '.join(KNOWN_TEMPLATES)}")
        text, origin = read_text(path, what="chat template", error=ConfigError), str(path)  # strict UTF-8, capped
    check_chat_template(text, origin)
    return text


def check_chat_template(text: str, origin: str) -> None:
    """Compile and render a probe conversation as transformers does; ConfigError says what is wrong."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered = render_jinja_template(conversations=[_PROBE], chat_template=text,
                                         add_generation_prompt=True)[0]  # (texts, generation indices)
    except (TemplateError, TypeError, ValueError) as exc:
        raise ConfigError(f"data.chat_template ({origin}) does not render: {exc}", code="invalid_chat_template",
                          hint="check the Jinja syntax; the template gets `messages` and `add_generation_prompt`") \
            from None
    missing = [m["content"] for m in _PROBE if m["content"] not in rendered[0]]
    if missing:
        raise ConfigError(f"data.chat_template ({origin}) leaves out message contents ({missing[0]!r})",
                          code="invalid_chat_template", hint="render each message's `content`")


def apply_chat_template_override(tokenizer, value: str | None) -> None:
    """Set the named template on `tokenizer` (a no-op for None)."""
    if value is not None:
        tokenizer.chat_template = load_chat_template(value)
