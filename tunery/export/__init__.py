"""Export a completed run: its PEFT adapter, a merged Hugging Face folder, or a GGUF file.

Every export is reloaded and its logits compared with the run's on fixed prompts before it is
published; see `run.py`.
"""

from tunery.export.run import FORMATS, ExportResult, export_run

__all__ = ["FORMATS", "ExportResult", "export_run"]
