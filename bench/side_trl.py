"""The baseline: TRL `SFTTrainer` + PEFT `LoraConfig` with their documented best settings for a CPU.

Choices (see docs/benchmarks.md): padding-free batches (TRL's `padding_free=True`; the data is
pre-filtered to fit `max_seq_len`, so `max_length=None` truncates nothing), loss on assistant
tokens only (`assistant_only_loss=True` with the model's template plus `{% generation %}` markers
from bench/templates, checked to render identically, since TRL ships no training template for it), bf16 autocast (`bf16=True`, TRL's default) unless
fp32 is asked for, no gradient checkpointing (memory is not short), no evaluation during training.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.workload import Workload

TEMPLATE_DIR = Path(__file__).parent / "templates"


PROBES = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
]


def training_template(tokenizer) -> Path | None:
    """A template of ours with `{% generation %}` markers that renders exactly like the model's own."""
    for path in sorted(TEMPLATE_DIR.glob("*_training.jinja")):
        candidate = path.read_text(encoding="utf-8")
        if all(tokenizer.apply_chat_template(m, tokenize=False) ==
               tokenizer.apply_chat_template(m, tokenize=False, chat_template=candidate) for m in PROBES):
            return path
    return None


def run_trl(work: Workload, output_dir: Path) -> dict:
    """Train with TRL; return timing, token counts and the adapter folder."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if work.threads:
        torch.set_num_threads(work.threads)
    counts = {"tokens": 0, "trained_tokens": 0, "micro_batches": 0}
    clock: dict[str, float] = {}

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            counts["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            counts["trained_tokens"] += int((inputs["labels"] != -100).sum())
            counts["micro_batches"] += 1
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    tokenizer = AutoTokenizer.from_pretrained(work.model_path)
    template = training_template(tokenizer)
    dataset = load_dataset("json", data_files=work.train_file, split="train")
    bf16 = work.precision != "fp32"
    args = SFTConfig(
        output_dir=str(output_dir), max_steps=work.steps, per_device_train_batch_size=work.batch_size,
        gradient_accumulation_steps=work.grad_accum, learning_rate=work.learning_rate,
        lr_scheduler_type=work.lr_schedule, warmup_steps=work.warmup_steps, weight_decay=0.0,
        max_grad_norm=1.0, seed=work.seed, data_seed=work.seed, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False, padding_free=True, max_length=None, assistant_only_loss=True,
        chat_template_path=str(template) if template else None, report_to="none", logging_steps=1,
        save_strategy="no", eval_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32, "trust_remote_code": False, "use_kernels": False},
    )
    peft_config = LoraConfig(r=work.rank, lora_alpha=work.alpha, lora_dropout=0.0,
                             target_modules=work.targets, bias="none", task_type="CAUSAL_LM")
    trainer = CountingSFTTrainer(model=work.model_path, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config,
                                 callbacks=[StepClock()])
    result = trainer.train()
    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "side": "trl", "train_wall_s": clock["end"] - clock["start"],
        "train_cpu_s": clock["cpu_end"] - clock["cpu_start"], "steps": trainer.state.global_step,
        "tokens": counts["tokens"], "trained_tokens": counts["trained_tokens"],
        "micro_batches": counts["micro_batches"], "final_train_loss": losses[-1] if losses else None,
        "reported_train_runtime_s": result.metrics.get("train_runtime"),
        "adapter_dir": str(adapter_dir), "model_dir": None,
        "settings": {"bf16_autocast": bf16, "padding_free": True, "assistant_only_loss": True,
                     "chat_template": template.name if template else "model's own",
                     "gradient_checkpointing": False, "optim": str(args.optim),
                     "torch_threads": torch.get_num_threads()},
    }
