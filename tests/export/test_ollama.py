"""The Ollama Modelfile renders conversations exactly as the model's chat template does: its TEMPLATE,
run through a reader of Go's text/template (checked against Go itself, here and wherever `go` is installed),
equals transformers' rendering for every chat template a llama-family GGUF may carry."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.chat_templates import LLAMA31_TOOLS as LLAMA31
from tunery.data.chat_templates import KNOWN_TEMPLATES
from tunery.export.gotemplate import render_go_template
from tunery.export.ollama import (
    SAMPLE_CONVERSATIONS,
    derive_chat_format,
    modelfile_text,
    ollama_values,
    render_chat,
    verified_template,
)

SMOLLM2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
          "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
          "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

TEMPLATES = {"smollm2": SMOLLM2, "chatml": KNOWN_TEMPLATES["chatml"], "llama3": LLAMA3, "llama3.1": LLAMA31,
             "zephyr": ZEPHYR}
MORE_CONVERSATIONS = [  # beyond the samples the export checks itself with
    [{"role": "system", "content": "Réponds en français. Use {{braces}} and <tags> freely."},
     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bonjour !"},
     {"role": "user", "content": "Two\n\nparagraphs"}, {"role": "assistant", "content": "A\nB"},
     {"role": "user", "content": "Last"}],
    [{"role": "user", "content": "{{ .Content }} is text here"}],
]
GO_CASES = [  # (template, data, what Go 1.19's text/template printed)
    ('{{- range $i, $m := .Messages }}{{ if $i }}, {{ end }}{{ $m.Role }}={{ .Content }}{{ end -}}\n  !',
     {'Messages': [{'Role': 'user', 'Content': 'a'}, {'Role': 'assistant', 'Content': 'b'}]},
     'user=a, assistant=b!'),
    ('{{ if (and .Messages (eq (index .Messages 0).Role "system")) }}S{{ else if not .Messages }}none{{ else }}U{{ end }}',
     {'Messages': [{'Role': 'user', 'Content': 'x'}]},
     'U'),
    ('{{ if (and .Messages (eq (index .Messages 0).Role "system")) }}S{{ else if not .Messages }}none{{ else }}U{{ end }}',
     {'Messages': []},
     'none'),
    ('{{ if (and .Messages (eq (index .Messages 0).Role "system")) }}S{{ else if not .Messages }}none{{ else }}U{{ end }}',
     {'Messages': [{'Role': 'system'}]},
     'S'),
    ('{{ range .Messages }}{{ else }}empty{{ end }} {{ len .Messages }} {{ "{{" }} {{ json .Args }} {{ eq .S "a" "b" }} {{ or .Missing "dflt" }}',
     {'Messages': [], 'Args': {'z': [1, 'q"<'], 'a': None}, 'S': 'b'},
     'empty 0 {{ {"a":null,"z":[1,"q\\"\\u003c"]} true dflt'),
    ('a  {{- /* note */ -}}  b {{ .Text }}\n{{- if .T }}yes{{ end }}',
     {'Text': 't\n', 'T': True},
     'ab t\nyes'),
]


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_modelfile_template_renders_as_the_chat_template(tokenizer, name):
    tokenizer.chat_template = TEMPLATES[name]
    verified = verified_template(tokenizer)
    assert verified is not None
    template, chat = verified
    for messages in SAMPLE_CONVERSATIONS + MORE_CONVERSATIONS:
        assert render_go_template(template, ollama_values(messages, chat.default_system)) == \
            render_chat(tokenizer, messages)
    text = modelfile_text("m.gguf", tokenizer)
    assert f'TEMPLATE """{template}"""' in text
    stops = [line.split(" ", 2)[2] for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert json.dumps(chat.suffix["assistant"].strip()) in stops  # the text that ends the model's turn stops it
    assert ("SYSTEM" in text) == (name == "smollm2")


def test_a_default_system_prompt_becomes_system_and_the_date_preamble_stays_in_the_template(tokenizer):
    tokenizer.chat_template = SMOLLM2
    chat = derive_chat_format(tokenizer)
    assert chat.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in \
        modelfile_text("m.gguf", tokenizer)
    tokenizer.chat_template = LLAMA31  # an empty system turn with a preamble, with or without a system message
    template, chat = verified_template(tokenizer)
    assert chat.default_system is None and template.count("Cutting Knowledge Date") == 2


def test_a_template_that_is_not_a_sequence_of_turns_gets_no_template(tokenizer):
    tokenizer.chat_template = LLAMA2  # the system prompt folded into the first user turn
    assert verified_template(tokenizer) is None
    text = modelfile_text("m.gguf", tokenizer)
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "") and 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.parametrize("template, data, printed", GO_CASES)
def test_the_go_template_reader_prints_what_go_prints(template, data, printed):
    assert render_go_template(template, data) == printed


GO_MAIN = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

func main() {
\tvar in struct {
\t\tTemplate string         `json:"template"`
\t\tData     map[string]any `json:"data"`
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
\t\tpanic(err)
\t}
\tfuncs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
\ttmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template))
\tif err := tmpl.Execute(os.Stdout, in.Data); err != nil {
\t\tpanic(err)
\t}
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt-get install golang-go)")
def test_go_itself_renders_the_modelfile_templates_the_same(tokenizer, tmp_path):
    (tmp_path / "main.go").write_text(GO_MAIN)
    (tmp_path / "go.mod").write_text("module gorender\n\ngo 1.19\n")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin:/usr/local/go/bin", "HOME": str(tmp_path),
           "GOCACHE": str(tmp_path / "cache"), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(["go", "build", "-o", "gorender", "."], cwd=tmp_path, env=env, check=True, timeout=300)

    def go(template: str, data: dict) -> str:
        return subprocess.run([str(tmp_path / "gorender")], input=json.dumps({"template": template, "data": data}),
                              capture_output=True, text=True, check=True, timeout=60).stdout

    for template, data, printed in GO_CASES:
        assert go(template, data) == printed
    for name, chat_template in TEMPLATES.items():
        tokenizer.chat_template = chat_template
        template, chat = verified_template(tokenizer)
        for messages in SAMPLE_CONVERSATIONS + MORE_CONVERSATIONS:
            assert go(template, ollama_values(messages, chat.default_system)) == render_chat(tokenizer, messages), name
