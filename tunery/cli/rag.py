"""`tunery rag index` and `tunery rag search`: build a document index, and look into it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors, print_json
from tunery.errors import ConfigError
from tunery.rag import build_index, open_index
from tunery.safeio import read_text

rag_app = typer.Typer(help="Index documents for retrieval and search them; use an index with MODEL+rag:INDEX_DIR.",
                      no_args_is_help=True)
app.add_typer(rag_app, name="rag")


@rag_app.command("index")
@handle_errors
def index_command(
    docs: list[Path] = typer.Argument(..., help="Files and folders: .txt, .md, .html, .pdf, .jsonl (a \"text\" field)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model whose tokenizer measures the chunks "
                              "(use the index with this model or one sharing its tokenizer)."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", help="Most tokens per chunk."),
    overlap_tokens: int = typer.Option(32, "--overlap-tokens", help="Tokens of whole sentences consecutive chunks "
                                       "share (at most half a chunk)."),
    embedding_model: Path = typer.Option(None, "--embedding-model", help="Local sentence-transformers folder: adds "
                                         "dense vectors; search then fuses bm25 and dense ranks (hybrid)."),
    top_k: int = typer.Option(5, "--top-k", help="Chunks a MODEL+rag:INDEX reference puts into each prompt."),
    template: str = typer.Option(None, "--template", help="Prompt template with {context} and {question}, or @FILE; "
                                 "kept as prompt.txt in the index, where it can be edited."),
    update: bool = typer.Option(False, "--update", help="Re-index only files whose content changed; drop files no "
                                "longer given."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build anew over an existing index."),
    as_json: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
) -> None:
    """Read documents, chunk them by the model's tokens, and write a versioned index folder."""
    if template is not None and template.startswith("@"):
        template = read_text_file(Path(template[1:]), "--template")
    report = build_index(docs, out, model=model, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens,
                         embedding_model=embedding_model, top_k=top_k, template=template, update=update,
                         rebuild=rebuild, warn=print_warning)
    if as_json:
        print_json(report.as_dict())
        return
    taken = f", {report.reused_sources} unchanged" if update else ""
    console.print(f"indexed {report.sources} files ({report.rechunked_sources} read{taken}"
                  f"{f', {report.removed_sources} removed' if report.removed_sources else ''}) into "
                  f"{report.chunks} chunks in {report.seconds:.1f}s; retrieval: {'+'.join(report.retrievers)}; "
                  f"{len(report.warnings)} warnings", highlight=False)
    console.print(f"index: {report.path} (use it as MODEL+rag:{report.path})", highlight=False)


def print_warning(text: str) -> None:
    # Warnings name files: never read as markup, never wrapped inside a path.
    err_console.print(f"[yellow]warning[/]: {escape(text)}", highlight=False, soft_wrap=True)


def read_text_file(path: Path, option: str) -> str:
    return read_text(path, what=f"{option} file", error=ConfigError)  # strict UTF-8, size-capped, located errors


@rag_app.command("search")
@handle_errors
def search_command(
    index: Path = typer.Argument(..., help="Index folder written by `tunery rag index`."),
    query: str = typer.Argument(..., help="What to search for."),
    k: int = typer.Option(5, "-k", "--k", min=1, help="How many chunks to return."),
    mode: str = typer.Option(None, "--mode", help="bm25, dense or hybrid (default: hybrid when the index has "
                             "dense vectors, else bm25)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, score, source, text, ...}."),
) -> None:
    """Print the chunks that best match a query, with their sources."""
    hits = open_index(index).search(query, k=k, mode=mode)
    if as_json:
        print_json([hit.as_dict() for hit in hits])
        return
    if not hits:
        console.print("no chunk matches that query")
    for hit in hits:
        console.print(f"[bold]{hit.rank}.[/] [cyan]{hit.label()}[/] [dim]score {hit.score:.3f}[/]", highlight=False)
        console.print(hit.text, markup=False, highlight=False)
        console.print()
