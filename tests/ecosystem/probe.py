"""Open one exported artifact the way its own tool does and report tokens and greedy answers as JSON.

Runs under any interpreter that has the tool (llama-cpp-python; transformers 4.x or 5.x with PEFT);
it imports nothing from tunery, so what it reports is what a user of that tool sees.
Usage: python probe.py REQUEST.json  ->  JSON on stdout.
"""

from __future__ import annotations

import json
import sys


def probe_gguf(request: dict) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=request["path"], n_ctx=1024, n_threads=1, seed=0, verbose=False)
    tokens = [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in request["texts"]]
    answers = []
    for messages in request["chats"]:
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                           max_tokens=request["max_new_tokens"], seed=0)
        answers.append(reply["choices"][0]["message"]["content"].strip())
    return {"tool": f"llama-cpp-python {llama_cpp.__version__}", "tokens": tokens, "answers": answers}


def probe_transformers(request: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    if request["kind"] == "adapter":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(request["base"], torch_dtype=torch.float32)
        model = PeftModel.from_pretrained(base, request["path"])
    else:
        model = AutoModelForCausalLM.from_pretrained(request["path"], torch_dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(request["path"])
    tokens = [tokenizer.encode(text, add_special_tokens=False) for text in request["texts"]]
    stops = request["stop_token_ids"]
    answers, prompt_ids = [], []
    for messages in request["chats"]:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        prompt_ids.append(ids)
        with torch.inference_mode():
            output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=request["max_new_tokens"], eos_token_id=stops,
                                    pad_token_id=stops[0])
        new = [t for t in output[0, len(ids):].tolist()]
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))
        answers.append(tokenizer.decode(new[:cut], skip_special_tokens=True).strip())
    return {"tool": f"transformers {transformers.__version__}", "tokens": tokens, "prompt_ids": prompt_ids,
            "answers": answers, "rope_theta": float(getattr(model.config, "rope_theta", 0) or 0)
            if not hasattr(model.config, "rope_parameters") else float(model.config.rope_parameters["rope_theta"])}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    result = probe_gguf(request) if request["kind"] == "gguf" else probe_transformers(request)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
