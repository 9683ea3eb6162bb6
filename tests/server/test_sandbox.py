"""Chat templates come from model folders, so they render in Jinja's sandbox: no attribute escapes."""

import pytest

from tunery.data.template import encode_prompt
from tunery.errors import DataError


def test_a_hostile_chat_template_cannot_reach_python_internals(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(DataError, match="unsafe|access"):
        encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    tokenizer.chat_template = "{% set x = messages.append({'role': 'system', 'content': 'injected'}) %}ok"
    with pytest.raises(DataError):  # the environment is immutable: templates cannot mutate the messages
        encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
