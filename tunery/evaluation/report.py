"""Render a comparison Summary as one self-contained HTML file and a Markdown summary.

The HTML has inline CSS and inline SVG only: no scripts, no fonts, no links to anything outside
the file, so it opens offline and can be attached to a ticket. Every user string is escaped.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from tunery.evaluation.svg import delta_bars, grouped_bars, line_chart

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}pre{white-space:pre-wrap;margin:0;
max-width:380px;font-size:12px}.pos{color:#1a7f37}.neg{color:#c62828}h2{margin-top:28px}
"""
MAX_EXAMPLES_SHOWN = 200
FIELD_PREFIX = "json_field."


def headline_metrics(summary) -> list[str]:
    names: list[str] = []
    for model in summary.models:
        for name in model.metrics:
            if name not in names:
                names.append(name)
    return names


def write_reports(summary, out_dir: Path) -> None:
    (out_dir / "report.html").write_text(render_html(summary), encoding="utf-8")
    (out_dir / "summary.md").write_text(render_markdown(summary), encoding="utf-8")


def render_html(summary) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tunery comparison</title>"
             f"<style>{STYLE}</style></head><body><h1>tunery comparison</h1>",
             f"<p>Tasks: <code>{escape(summary.tasks_path)}</code>; "
             f"{len(summary.models[0].rows)} examples; greedy decoding; 95% bootstrap intervals.</p>"]
    parts.append(render_gates(summary))
    if summary.verdict.get("text"):
        parts.append(f"<h2>Verdict</h2><p>{escape(summary.verdict['text'])}</p>")
    parts.append(render_metric_table(summary))
    parts.append(render_usage(summary))
    parts.append(render_tasks(summary))
    for comparison in summary.comparisons:
        parts.append(render_comparison(comparison))
    parts.append(render_curves(summary))
    for comparison in summary.comparisons:
        parts.append(render_examples(summary, comparison))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_gates(summary) -> str:
    if not summary.gates:
        return ""
    verdict = "<span class='pass'>PASSED</span>" if summary.passed else "<span class='fail'>FAILED</span>"
    rows = "".join(f"<tr><td><code>{escape(g.rule)}</code></td><td>{escape(g.model)}</td>"
                   f"<td class='{'pass' if g.passed else 'fail'}'>{'pass' if g.passed else 'FAIL'}</td>"
                   f"<td>{escape(g.detail)}</td></tr>" for g in summary.gates)
    return (f"<h2>Gates: {verdict}</h2><table><tr><th>rule</th><th>model</th><th>result</th><th>detail</th></tr>"
            f"{rows}</table>")


def render_metric_table(summary) -> str:
    names = headline_metrics(summary)
    head = "".join(f"<th>{escape(m.label)}</th>" for m in summary.models)
    rows = []
    for name in names:
        cells = []
        for model in summary.models:
            stats = model.metrics.get(name)
            cells.append(f"<td class='num'>{stats['mean']:.3f} <small>[{stats['low']:.3f}, {stats['high']:.3f}]"
                         f" n={stats['n']}</small></td>" if stats else "<td>-</td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    for key in ("loss", "perplexity"):
        if any(m.loss for m in summary.models):
            loss_cells = "".join(f"<td class='num'>{m.loss[key]:.4f}</td>" if m.loss else "<td>-</td>"
                                 for m in summary.models)
            rows.append(f"<tr><td>{key}</td>{loss_cells}</tr>")
    main, fields = split_fields(names)
    chart = metric_bars(summary, main)
    if fields:
        chart += f"<h3>Per JSON field</h3>{metric_bars(summary, fields)}"
    return f"<h2>Metrics</h2><table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>{chart}"


def split_fields(names) -> tuple[list[str], list[str]]:
    """(headline metrics, per-field metrics `json_field.NAME`): charted apart, as their scales differ in kind."""
    return ([n for n in names if not n.startswith(FIELD_PREFIX)], [n for n in names if n.startswith(FIELD_PREFIX)])


def metric_bars(summary, names: list[str]) -> str:
    series = [(m.label, [(m.metrics[n]["mean"], m.metrics[n]["low"], m.metrics[n]["high"]) if n in m.metrics
                         else (0.0, 0.0, 0.0) for n in names]) for m in summary.models]
    return grouped_bars([n.removeprefix(FIELD_PREFIX) for n in names], series)


def usage_rows(summary) -> list[tuple[str, list[str]]]:
    """(measure, one cell per model) for the cost table: latency, tokens, retrieval hit rate."""
    def cell(model, key, fmt):
        value = (model.usage or {}).get(key)
        return "-" if value is None else fmt.format(value)

    def cut(model):
        flags = [row["truncated"] for row in model.rows if "truncated" in row]
        return "-" if not flags else f"{sum(flags)} of {len(flags)}"

    def hit(model):
        rate = (model.usage or {}).get("retrieval_hit_rate")
        return "-" if not rate else f"{rate['mean']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] n={rate['n']}"

    return [("median latency per answer (ms)", [cell(m, "median_latency_ms", "{:.0f}") for m in summary.models]),
            ("median prompt tokens per answer", [cell(m, "median_prompt_tokens", "{:.0f}") for m in summary.models]),
            ("median answer tokens", [cell(m, "median_completion_tokens", "{:.0f}") for m in summary.models]),
            ("answers cut at max_new_tokens", [cut(m) for m in summary.models]),
            ("retrieval hit rate", [hit(m) for m in summary.models])]


def render_usage(summary) -> str:
    head = "".join(f"<th>{escape(m.label)}</th>" for m in summary.models)
    rows = "".join(f"<tr><td>{escape(name)}</td>{''.join(f'<td class=num>{escape(c)}</td>' for c in cells)}</tr>"
                   for name, cells in usage_rows(summary))
    return (f"<h2>Cost</h2><p>Latency is the wall time of the batch an answer was generated in, plus its retrieval; "
            f"the hit rate counts rows that name their expected source or evidence.</p>"
            f"<table><tr><th>measure</th>{head}</tr>{rows}</table>")


def render_tasks(summary) -> str:
    tasks = {m.label: m.by_task() for m in summary.models}
    names = sorted({task for per in tasks.values() for task in per})
    if not names:
        return ""
    head = "".join(f"<th>{escape(m.label)}</th>" for m in summary.models)
    rows = []
    for task in names:
        for metric in sorted({k for per in tasks.values() for k in per.get(task, {}) if not k.startswith("json_field.")}):
            cells = []
            for m in summary.models:
                stats = tasks[m.label].get(task, {}).get(metric)
                cells.append(f"<td class='num'>{stats['mean']:.3f} <small>[{stats['low']:.3f}, {stats['high']:.3f}] "
                             f"n={stats['n']}</small></td>" if stats else "<td>-</td>")
            rows.append(f"<tr><td>{escape(task)}</td><td>{escape(metric)}</td>{''.join(cells)}</tr>")
    return f"<h2>Per task</h2><table><tr><th>task</th><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def render_comparison(comparison) -> str:
    rows = []
    for name, d in comparison.deltas.items():
        css = "pos" if d["delta"] > 0 else "neg" if d["delta"] < 0 else ""
        rows.append(f"<tr><td>{escape(name)}</td><td class='num'>{d['baseline']:.3f}</td>"
                    f"<td class='num'>{d['candidate']:.3f}</td><td class='num {css}'>{d['delta']:+.3f}</td>"
                    f"<td class='num'>[{d['low']:+.3f}, {d['high']:+.3f}]</td><td class='num'>{d['n']}</td></tr>")
    o = comparison.outcomes
    main, fields = split_fields(list(comparison.deltas))
    chart = delta_bars([(n, *(comparison.deltas[n][k] for k in ("delta", "low", "high"))) for n in main])
    if fields:
        chart += "<h3>Per JSON field</h3>" + delta_bars(
            [(n.removeprefix(FIELD_PREFIX), *(comparison.deltas[n][k] for k in ("delta", "low", "high")))
             for n in fields])
    return (f"<h2>{escape(comparison.candidate)} vs {escape(comparison.baseline)}</h2>"
            f"<p>Per example: <b class='pos'>{o['wins']} wins</b>, <b class='neg'>{o['losses']} losses</b>, "
            f"{o['ties']} ties.</p><table><tr><th>metric</th><th>{escape(comparison.baseline)}</th>"
            f"<th>{escape(comparison.candidate)}</th><th>delta</th><th>95% CI</th><th>n</th></tr>"
            f"{''.join(rows)}</table>{chart}")


def render_curves(summary) -> str:
    charts = []
    for label, curves in summary.loss_curves.items():
        series = [(f"{label} train", curves.get("train", []), False), (f"{label} val", curves.get("val", []), True)]
        chart = line_chart(series)
        if chart:
            charts.append(f"<h3>{escape(label)}</h3>{chart}")
    if not charts:
        return ""
    return "<h2>Training and validation loss</h2>" + "".join(charts)


def render_examples(summary, comparison) -> str:
    """Regressions first (worst first), then improvements, then every other example."""
    changed = comparison.regressions + comparison.improvements
    changed_ids = {x["id"] for x in changed}
    base = next(m for m in summary.models if m.label == comparison.baseline)
    cand = {row["id"]: row for row in next(m for m in summary.models if m.label == comparison.candidate).rows}
    ties = [{"id": r["id"], "location": r["location"], "prompt": r["messages"][-1]["content"],
             "reference": r["reference"], "baseline": r["prediction"], "candidate": cand[r["id"]]["prediction"],
             "baseline_score": r["score"], "candidate_score": cand[r["id"]]["score"], "delta": 0.0,
             "baseline_truncated": bool(r.get("truncated")),
             "candidate_truncated": bool(cand[r["id"]].get("truncated"))}
            for r in base.rows if r["id"] not in changed_ids and r["id"] in cand]
    shown = (changed + ties)[:MAX_EXAMPLES_SHOWN]
    rows = []
    for x in shown:
        css = "neg" if x["delta"] < 0 else "pos" if x["delta"] > 0 else ""
        outcome = "regressed" if x["delta"] < 0 else "improved" if x["delta"] > 0 else "tie"
        rows.append(f"<tr><td>{escape(x['id'])}<br><small>{escape(x['location'])}</small></td>"
                    f"<td><pre>{escape(x['prompt'])}</pre></td><td><pre>{escape(x['reference'])}</pre></td>"
                    f"<td>{answer_cell(x, 'baseline')}</td><td>{answer_cell(x, 'candidate')}</td>"
                    f"<td class='num {css}'>{score_text(x['baseline_score'])} → {score_text(x['candidate_score'])}"
                    f"<br>{outcome}</td></tr>")
    more = f"<p>{len(changed) + len(ties) - len(shown)} more in the predictions files.</p>" \
        if len(changed) + len(ties) > len(shown) else ""
    return (f"<h2>Examples: {escape(comparison.candidate)} vs {escape(comparison.baseline)} "
            f"({len(comparison.regressions)} regressed, shown first)</h2><table><tr><th>id</th><th>prompt</th>"
            f"<th>reference</th><th>{escape(comparison.baseline)}</th><th>{escape(comparison.candidate)}</th>"
            f"<th>score</th></tr>{''.join(rows)}</table>{more}")


def answer_cell(example: dict, side: str) -> str:
    """An answer, flagged when generation stopped at max_new_tokens (it may be cut mid-sentence or mid-JSON)."""
    flag = "<br><small class='neg'>cut at max_new_tokens</small>" if example.get(f"{side}_truncated") else ""
    return f"<pre>{escape(example[side])}</pre>{flag}"


def score_text(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_markdown(summary) -> str:
    lines = ["# tunery comparison", "", f"Tasks: `{summary.tasks_path}`, {len(summary.models[0].rows)} examples.", ""]
    if summary.gates:
        lines += [f"**Gates: {'PASSED' if summary.passed else 'FAILED'}**", ""]
        lines += [f"- {'pass' if g.passed else 'FAIL'} `{g.rule}` ({g.model}): {g.detail}" for g in summary.gates]
        lines.append("")
    if summary.verdict.get("text"):
        lines += ["**Verdict.** " + summary.verdict["text"], ""]
    names = headline_metrics(summary)
    lines += ["| metric | " + " | ".join(m.label for m in summary.models) + " |",
              "|---|" + "---|" * len(summary.models)]
    for name in names:
        cells = [f"{m.metrics[name]['mean']:.3f} [{m.metrics[name]['low']:.3f}, {m.metrics[name]['high']:.3f}]"
                 if name in m.metrics else "-" for m in summary.models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(m.loss for m in summary.models):
        for key in ("loss", "perplexity"):
            cells = [f"{m.loss[key]:.4f}" if m.loss else "-" for m in summary.models]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in usage_rows(summary)]
    for comparison in summary.comparisons:
        o = comparison.outcomes
        lines += ["", f"## {comparison.candidate} vs {comparison.baseline}", "",
                  f"{o['wins']} wins, {o['losses']} losses, {o['ties']} ties.", "",
                  "| metric | delta | 95% CI |", "|---|---|---|"]
        lines += [f"| {n} | {d['delta']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] |"
                  for n, d in comparison.deltas.items()]
        if comparison.regressions:
            lines += ["", "Regressed examples (worst first):", ""]
            lines += [f"- `{x['id']}` ({x['location']}): {score_text(x['baseline_score'])} → "
                      f"{score_text(x['candidate_score'])}" for x in comparison.regressions[:20]]
    lines += ["", "Full report: report.html", ""]
    return "\n".join(lines)
