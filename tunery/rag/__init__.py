"""Retrieval beside fine-tuning: read documents, chunk them by the model's tokens, index them (bm25s;
dense vectors when given a model), search, and put what was found into prompts with citations.

Used by evaluation, inference and training alike; importing this package loads no torch.
"""

from tunery.rag.index import IndexReport, build_index
from tunery.rag.prompt import DEFAULT_TEMPLATE, RagPrompt, Retriever, fit_prompt
from tunery.rag.retrieval import Hit, RagIndex, open_index

__all__ = ["DEFAULT_TEMPLATE", "Hit", "IndexReport", "RagIndex", "RagPrompt", "Retriever", "build_index",
           "fit_prompt", "open_index"]
