"""RAG or fine-tuning? Measure it on the invented facts: base, base+rag, tuned, tuned+rag, and a
retrieval-aware tuned model (data.rag), side by side in one `tunery compare` report.

The handbook (every fact, one paragraph each) is indexed; half of the facts are tuned on, and
questions about both halves are asked: facts the tuned models saw, and facts only the index has.

    python examples/facts/rag.py --out /tmp/rag-facts                 # 10 facts of each kind
    python examples/facts/rag.py --out /tmp/rag-facts --per-kind 20 --docs docs/rag.md
    python examples/facts/rag.py --out /tmp/rag-facts --no-tuning     # base and base+rag only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS_START, DOCS_END = "<!-- rag-comparison:start -->\n", "<!-- rag-comparison:end -->"


def read_facts(per_kind: int) -> list[dict]:
    """The first `per_kind` facts of each kind, in file order."""
    facts = [json.loads(line) for line in (HERE / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    return first_of_each_kind(facts, per_kind)


def split_facts(facts: list[dict]) -> tuple[list[dict], list[dict]]:
    """Alternate facts: even ones are tuned on, odd ones only the index knows."""
    return facts[0::2], facts[1::2]


def write_handbook(facts: list[dict], path: Path) -> Path:
    """A Markdown handbook stating every fact (the document retrieval reads)."""
    sections: dict[str, list[str]] = {}
    for fact in facts:
        sections.setdefault(fact["kind"], []).append(fact["answer"])
    lines = ["# Zentrix handbook", ""]
    for kind, answers in sections.items():
        lines += [f"## {kind.replace('_', ' ').title()}", ""]
        for answer in answers:
            lines += [answer, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_chats(facts: list[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for fact in facts:
            messages = [{"role": "user", "content": fact["question"]}, {"role": "assistant", "content": fact["answer"]}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_tasks(groups: dict[str, list[dict]], path: Path, source: str = "handbook.md") -> Path:
    """One row per fact: its question, scored by whether the answer holds the fact's key."""
    with path.open("w", encoding="utf-8") as handle:
        for task, facts in groups.items():
            for number, fact in enumerate(facts):
                handle.write(json.dumps({"id": f"{task}-{number}", "prompt": fact["question"], "reference": fact["key"],
                                         "metric": "contains", "source": source, "evidence": fact["key"],
                                         "meta": {"task": task}}) + "\n")
    return path


def build_handbook_index(facts: list[dict], out: Path, model: str = "smollm2-135m-instruct") -> Path:
    from tunery.rag import build_index

    handbook = write_handbook(facts, out / "docs" / "handbook.md")
    build_index([handbook], out / "index", model=model, chunk_tokens=48, overlap_tokens=0, top_k=3, rebuild=True)
    return out / "index"


def train_facts(chats: Path, run_dir: Path, overrides: list[str], reuse: bool = False) -> Path:
    """Train on `chats` into `run_dir`; with `reuse`, a completed run already there is kept as it is."""
    import tunery
    from tunery.config import load_train_config

    if reuse and (run_dir / "run.json").is_file():
        if json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status") == "completed":
            return run_dir

    config = load_train_config(HERE / "train.yaml", [f"data.train={chats}", f"output_dir={run_dir}", *overrides])
    run = tunery.train(config, quiet=True)
    if run.status != "completed":  # a stop request (SIGTERM, Ctrl-C) ends training early: compare nothing half-made
        raise SystemExit(f"training {run_dir} stopped ({run.status}); rerun with --reuse to keep finished runs")
    return run_dir


def first_of_each_kind(facts: list[dict], count: int | None) -> list[dict]:
    """The first `count` facts of each kind among `facts` (all when count is None)."""
    if count is None:
        return facts
    seen: dict[str, int] = {}
    kept = []
    for fact in facts:
        seen[fact["kind"]] = seen.get(fact["kind"], 0) + 1
        if seen[fact["kind"]] <= count:
            kept.append(fact)
    return kept


def compare_all(out: Path, per_kind: int, overrides: list[str], tune: bool = True, data_rag: bool = True,
                reuse: bool = False, batch_size: int = 8, ask_per_kind: int | None = None):
    """Index and tune on `per_kind` facts of each kind; ask about the first `ask_per_kind` of each half."""
    from tunery.evaluation.compare import compare_models

    facts = read_facts(per_kind)
    tuned_on, index_only = split_facts(facts)
    index = build_handbook_index(facts, out)
    base = "smollm2-135m-instruct"
    refs = [base, f"{base}+rag:{index}"]
    if tune:
        chats = write_chats(tuned_on, out / "train.jsonl")
        tuned = train_facts(chats, out / "runs" / "tuned", overrides, reuse=reuse)
        refs += [str(tuned), f"{tuned}+rag:{index}"]
    if tune and data_rag:
        raft = train_facts(chats, out / "runs" / "tuned-data-rag", [f"data.rag={index}", *overrides], reuse=reuse)
        refs.append(f"{raft}+rag:{index}")
    tasks = write_tasks({"tuned facts": first_of_each_kind(tuned_on, ask_per_kind),
                         "index-only facts": first_of_each_kind(index_only, ask_per_kind)}, out / "tasks.jsonl")
    return compare_models(refs, tasks, out / "report", max_new_tokens=40, batch_size=batch_size)


class LoadSampler:
    """The 1-minute load average, sampled every `interval_s` while the comparison runs (a shared
    machine's latencies mean something only beside the load they were measured under)."""

    def __init__(self, interval_s: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval_s: float) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(interval_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        samples = self.samples or [os.getloadavg()[0]]
        from tunery.host import cpu_model

        return (f"{cpu_model()}, {os.cpu_count()} logical CPUs; 1-minute load average during the run "
                f"min {min(samples):.1f} / mean {sum(samples) / len(samples):.1f} / max {max(samples):.1f} "
                f"({len(samples)} samples)")


def render_docs_table(summary, per_kind: int, tune: bool = True, machine: str = "",
                      overrides: list[str] | tuple[str, ...] = (), options: list[str] | tuple[str, ...] = ()) -> str:
    """The comparison as the Markdown docs/rag.md embeds."""
    names = {0: "base", 1: "base + rag", 2: "tuned", 3: "tuned + rag", 4: "tuned with data.rag, + rag"}
    lines = ["| model | tuned facts | index-only facts | median latency (ms) | prompt tokens | retrieval hit rate |",
             "|---|---|---|---|---|---|"]
    for number, model in enumerate(summary.models):
        tasks = model.by_task()
        cells = []
        for task in ("tuned facts", "index-only facts"):
            stats = tasks.get(task, {}).get("contains")
            cells.append(f"{stats['mean']:.2f} [{stats['low']:.2f}, {stats['high']:.2f}]" if stats else "-")
        usage = model.usage
        hit = usage.get("retrieval_hit_rate")
        hit_text = f"{hit['mean']:.2f}" if hit else "-"
        lines.append(f"| {names.get(number, model.label)} | {cells[0]} | {cells[1]} | {usage['median_latency_ms']:.0f} | "
                     f"{usage['median_prompt_tokens']:.0f} | {hit_text} |")
    n = len(summary.models[0].rows)
    asked = f"{n // 8} of each kind and half, of " if n != 4 * per_kind else ""
    command = " ".join(["python examples/facts/rag.py", f"--per-kind {per_kind}", *([] if tune else ["--no-tuning"]),
                        *options, *overrides])
    lines += ["", f"{n} questions ({asked}{per_kind} facts of each of 4 kinds, half tuned on, all indexed); "
              "score: the answer holds the "
              "fact's key (part number, expansion, owner or room); 95% bootstrap intervals. Generated by "
              f"`{command}`.", "",
              f"Verdict: {summary.verdict['text']}", ""]
    if machine:
        lines[-1:-1] = [f"Measured on {machine}.", ""]
    return "\n".join(lines)


def update_docs(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOCS_START) + len(DOCS_START), text.index(DOCS_END)
    path.write_text(text[:start] + table + text[end:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the index, runs and report")
    parser.add_argument("--per-kind", type=int, default=10, help="facts of each of the 4 kinds (half are tuned on)")
    parser.add_argument("--docs", type=Path, default=None, help="also write the table into this Markdown page")
    parser.add_argument("--no-tuning", dest="tune", action="store_false",
                        help="compare base and base+rag only (minutes instead of the two training runs)")
    parser.add_argument("--no-data-rag", dest="data_rag", action="store_false",
                        help="leave out the retrieval-aware tuned model (data.rag), the longest training run")
    parser.add_argument("--reuse", action="store_true",
                        help="keep completed runs already under --out instead of training them again")
    parser.add_argument("--ask-per-kind", type=int, default=None,
                        help="ask about only the first N tuned and N index-only facts of each kind (a shorter run)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="answers generated together (latency is per batch, so compare rows of one run only)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE training config overrides for both tuned models")
    args = parser.parse_args()
    with LoadSampler() as load:
        summary = compare_all(args.out, args.per_kind, args.overrides, tune=args.tune, data_rag=args.data_rag,
                              reuse=args.reuse, batch_size=args.batch_size, ask_per_kind=args.ask_per_kind)
    options = ([] if args.data_rag else ["--no-data-rag"]) + ([f"--batch-size {args.batch_size}"]
                                                                 if args.batch_size != 8 else [])
    options += [f"--ask-per-kind {args.ask_per_kind}"] if args.ask_per_kind else []
    table = render_docs_table(summary, args.per_kind, tune=args.tune, machine=load.describe(), overrides=args.overrides,
                              options=options)
    sys.stdout.write(table + f"\nreport: {summary.report_path}\n")
    if args.docs:
        update_docs(args.docs, table)


if __name__ == "__main__":
    main()
