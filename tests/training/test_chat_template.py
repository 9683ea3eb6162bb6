"""`data.chat_template`: a named, file or inline template replaces the model's, is checked before
training, and is saved with the run's tokenizer so everything that reads the run renders with it."""

from __future__ import annotations

import pytest

import tunery
from tunery.config import load_train_config
from tunery.data.chat_templates import KNOWN_TEMPLATES, load_chat_template
from tunery.data.template import encode_prompt
from tunery.errors import ConfigError
from tunery.models import load_tokenizer

MARKDOWN = ("{% for m in messages %}{{ '### ' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}")


def test_names_files_and_inline_text_load(tmp_path):
    path = tmp_path / "team.jinja"
    path.write_text(MARKDOWN)
    assert load_chat_template("chatml") == KNOWN_TEMPLATES["chatml"]
    assert load_chat_template(str(path)) == MARKDOWN == load_chat_template(MARKDOWN)


@pytest.mark.parametrize(("value", "words"), [
    ("{% for m in messages %}{{ m['content'] }}", "does not render"),
    ("{{ messages[0]['role'] }}", "leaves out message contents"),
    ("no-such-template.jinja", "neither a file, a known name nor inline Jinja"),
])
def test_a_bad_template_is_a_config_error(value, words):
    with pytest.raises(ConfigError) as caught:
        load_chat_template(value)
    assert caught.value.code == "invalid_chat_template" and words in caught.value.message


def test_a_template_file_is_relative_to_the_config(tmp_path, tiny_model_dir):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "team.jinja").write_text(MARKDOWN)
    config_path = tmp_path / "train.yaml"
    config_path.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: data.jsonl\n"
                           "  chat_template: templates/team.jinja\n")
    config = load_train_config(config_path)
    assert config.data.chat_template == str(tmp_path / "templates" / "team.jinja")


def test_the_run_trains_and_saves_the_override(make_config, conversations):
    config = make_config("override", data={"chat_template": MARKDOWN}, train={"max_steps": 1})
    result = tunery.train(config, train_conversations=conversations, quiet=True)
    tokenizer = load_tokenizer(str(result.run_dir))  # what evaluation, serving and export load
    assert tokenizer.chat_template == MARKDOWN
    text = tokenizer.decode(encode_prompt(tokenizer, [{"role": "user", "content": "hi"}]))
    assert text == "### user\nhi<|im_end|>\n### assistant\n"
    broken = make_config("broken", data={"chat_template": "{% if %}"})
    with pytest.raises(ConfigError):
        tunery.train(broken, train_conversations=conversations, quiet=True)
