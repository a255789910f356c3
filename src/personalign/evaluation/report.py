"""One self-contained HTML report (and a Markdown summary) over comparison, author-benchmark and training runs.

Reads what the runs wrote (config.yaml, summary.json, outputs.jsonl, metrics.jsonl, and the metrics.jsonl of
training sub-runs under `methods/<name>/` or `author-<id>/methods/<name>/`). Charts are matplotlib (Agg)
PNGs embedded as base64, styles are inline: the file opens anywhere with no network and no other files.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personalign.errors import PersonalignError
from personalign.evaluation.evaluators import RulesEvaluator, paired, per_prompt_scores, score_rows
from personalign.evaluation.winrate import pairwise_winrate, winrate_matrix
from personalign.io import atomic_write_text, read_jsonl, read_yaml
from personalign.judges.rules import count_words

MAX_PROMPTS = 20  # side-by-side prompts per run: enough to read, small enough to open fast
MAX_CHARS = 1500  # per output shown in the side-by-side table
SKIP_SERIES = {"time", "step", "epoch", "author", "seed", "n", "sample"}
PRIMARY_ORDER = ("authorship", "llm_judge", "rules", "ref_cosine", "rouge_l")


@dataclass
class RunData:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # label → metrics rows

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def methods(self) -> list[str]:
        names = [r["method"] for r in self.outputs if "method" in r]
        names += [r["method"] for r in self.metrics if r.get("kind") == "method_summary" and "method" in r]
        return list(dict.fromkeys(names))

    def method_summaries(self) -> dict[str, dict[str, Any]]:
        found = {r["method"]: r for r in self.metrics if r.get("kind") == "method_summary" and "method" in r}
        return {m: {k: v for k, v in row.items() if k not in ("time", "kind", "method")} for m, row in found.items()}

    @property
    def evaluators(self) -> list[str]:
        names = {k for r in self.outputs for k in (r.get("scores") or {})}
        return [e for e in PRIMARY_ORDER if e in names] + sorted(names - set(PRIMARY_ORDER))


def _numeric_steps(rows: list[dict[str, Any]]) -> bool:
    return any(isinstance(r.get("step"), int | float) for r in rows)


def load_run(path: str | Path) -> RunData:
    """Read one run dir; a missing folder or one with nothing to report is a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise PersonalignError(f"{path}: run dir not found; pass folders written by compare, demo or eval authors")
    run = RunData(path)
    if (path / "config.yaml").is_file():
        run.config = read_yaml(path / "config.yaml") or {}
    if (path / "summary.json").is_file():
        import json

        run.summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    if (path / "outputs.jsonl").is_file():
        run.outputs = read_jsonl(path / "outputs.jsonl")
        for row in run.outputs:
            row["item"] = _item_key(row)  # one key per (author, prompt): the unit win rates pair on
    if (path / "metrics.jsonl").is_file():
        run.metrics = read_jsonl(path / "metrics.jsonl")
    if _numeric_steps(run.metrics):
        run.training[path.name] = [r for r in run.metrics if "step" in r]
    for sub in sorted([*path.glob("methods/*/metrics.jsonl"), *path.glob("author-*/methods/*/metrics.jsonl")]):
        rows = read_jsonl(sub)
        if _numeric_steps(rows):
            run.training[str(sub.parent.relative_to(path))] = [r for r in rows if "step" in r]
    if not (run.outputs or run.metrics or run.training):
        raise PersonalignError(f"{path}: no outputs.jsonl or metrics.jsonl; pass a finished run dir")
    _add_rule_scores(run)
    return run


def _add_rule_scores(run: RunData) -> None:
    """Comparison runs store raw outputs: score them with the profile's rules so every run has an evaluator."""
    if not run.outputs or any("scores" in r for r in run.outputs) or not run.config.get("profile"):
        return
    from personalign.profiles import load_profile

    try:
        profile = load_profile(run.config["profile"])
    except PersonalignError:
        return  # profile moved or deleted: the report still shows outputs and summaries
    score_rows(run.outputs, [RulesEvaluator(profile.constraints)])


# ---- charts -----------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; PNG output only
    import matplotlib.pyplot as plt

    return plt


def _item_key(row: dict[str, Any]) -> str:
    return f"{row.get('author', '')}|{row['prompt']}"


def winrate_chart(run: RunData, evaluator: str) -> tuple[str, dict[str, dict[str, float]]] | None:
    """Heat map of matrix[a][b] = win rate of row method over column method on one evaluator."""
    per = per_prompt_scores(run.outputs, evaluator, key="item")
    methods = [m for m in run.methods if m in per]
    if len(methods) < 2:
        return None
    common = sorted(set.intersection(*(set(per[m]) for m in methods)))
    if not common:
        return None
    matrix = winrate_matrix({m: [per[m][k] for k in common] for m in methods}, n_boot=100)
    values = [[matrix[a][b].rate for b in methods] for a in methods]
    plt = _plt()
    size = 1.0 + 0.9 * len(methods)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
        for j in range(len(methods)):
            ax.text(j, i, f"{values[i][j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if abs(values[i][j] - 0.5) > 0.3 else "black")
    ax.set_title(f"win rate of row over column ({evaluator}, {len(common)} prompts)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig), {a: {b: matrix[a][b].rate for b in methods} for a in methods}


def compliance_chart(run: RunData) -> str | None:
    summaries = run.method_summaries()
    methods = [m for m in run.methods if "compliance" in summaries.get(m, {})]
    if not methods:
        return None
    checks = sorted({k for m in methods for k in summaries[m] if k.startswith("pass_")})
    series = ["compliance", *checks]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(methods) + 2), 3.4))
    width = 0.8 / len(series)
    for s_index, name in enumerate(series):
        values = [_num(summaries[m].get(name)) for m in methods]
        xs = [i + s_index * width for i in range(len(methods))]
        ax.bar(xs, values, width=width, label=name.removeprefix("pass_"))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax.set_title("constraint compliance per method (all checks, then each check)", fontsize=10)
    ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def length_chart(run: RunData) -> str | None:
    methods = [m for m in run.methods if any(r.get("method") == m for r in run.outputs)]
    if not methods:
        return None
    data = [[count_words(r["output"]) for r in run.outputs if r.get("method") == m] for m in methods]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) + 1.5), 3.2))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_ylabel("words per output")
    ax.set_title("length distribution per method", fontsize=10)
    return _png(fig)


def scores_chart(run: RunData) -> str | None:
    evaluators = run.evaluators
    methods = run.methods
    if not evaluators or not methods:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(evaluators), figsize=(3.2 * len(evaluators) + 0.5, 3.0), squeeze=False)
    for ax, evaluator in zip(axes[0], evaluators, strict=True):
        means = []
        for m in methods:
            values = [r["scores"][evaluator] for r in run.outputs
                      if r.get("method") == m and (r.get("scores") or {}).get(evaluator) is not None]
            means.append(sum(values) / len(values) if values else math.nan)
        ax.bar(range(len(methods)), means, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"mean {evaluator}", fontsize=10)
    return _png(fig)


def training_chart(label: str, rows: list[dict[str, Any]]) -> str | None:
    """Every numeric series in a training run's metrics (loss, reward, KL, hacking diagnostics...) by step."""
    keys = sorted({k for r in rows for k, v in r.items()
                   if k not in SKIP_SERIES and isinstance(v, int | float) and not isinstance(v, bool)})
    if not keys:
        return None
    plt = _plt()
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.5 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"training: {label}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


# ---- HTML --------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}th,td{border:1px solid #ddd;padding:4px 8px;
vertical-align:top}th{background:#f3f5f8;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.out{white-space:pre-wrap;font-size:.85em;max-width:720px}.muted{color:#777;font-size:.85em}
.validity{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:8px 0}
figure{margin:12px 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return _esc(value)


def _figure(chart_id: str, png: str, caption: str) -> str:
    return (f'<figure id="{_esc(chart_id)}" class="chart"><img alt="{_esc(caption)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{_esc(caption)}</figcaption></figure>')


def _summary_table(run: RunData) -> str:
    summaries = run.method_summaries()
    methods = run.methods
    if not methods:
        return ""
    columns = list(dict.fromkeys(k for m in methods for k, v in summaries.get(m, {}).items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)))
    head = "".join(f"<th>{_esc(c)}</th>" for c in ["method", *columns, "outputs"])
    body = []
    for m in methods:
        n_out = sum(1 for r in run.outputs if r.get("method") == m)
        cells = "".join(f'<td class="num">{_fmt(summaries.get(m, {}).get(c, math.nan))}</td>' for c in columns)
        body.append(f'<tr><td class="method">{_esc(m)}</td>{cells}<td class="num">{n_out}</td></tr>')
    return f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'


def _vs_table(run: RunData, evaluator: str) -> str:
    """Win rate of each method vs base and vs prompt with bootstrap CIs (resampling authors when present)."""
    per = per_prompt_scores(run.outputs, evaluator, key="item")
    baselines = [b for b in ("base", "prompt") if b in per]
    if not baselines:
        return ""
    rows = []
    for m in [m for m in run.methods if m in per]:
        cells = []
        for b in baselines:
            keys, a, c = paired(per, m, b)
            groups = [k.split("|", 1)[0] for k in keys] if any(k.split("|", 1)[0] for k in keys) else None
            w = pairwise_winrate(a, c, n_boot=1000, groups=groups)
            cells.append(f'<td class="num">{_esc(str(w))}</td>')
        rows.append(f"<tr><td>{_esc(m)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>win vs {_esc(b)} [95% CI]</th>" for b in baselines)
    return f'<table class="vs"><tr><th>method ({_esc(evaluator)})</th>{head}</tr>{"".join(rows)}</table>'


def _side_by_side(run: RunData) -> str:
    items = list(dict.fromkeys(_item_key(r) for r in run.outputs))[:MAX_PROMPTS]
    evaluators = run.evaluators
    blocks = []
    for item in items:
        rows = [r for r in run.outputs if _item_key(r) == item and r.get("sample", 0) == 0]
        if not rows:
            continue
        author, prompt = item.split("|", 1)
        title = f"author {author}: " if author else ""
        reference = next((r.get("reference") for r in rows if r.get("reference")), None)
        head = "".join(f"<th>{_esc(e)}</th>" for e in evaluators)
        body = []
        for r in rows:
            text = r["output"] if len(r["output"]) <= MAX_CHARS else r["output"][:MAX_CHARS] + " …"
            scores = "".join(f'<td class="num">{_fmt((r.get("scores") or {}).get(e, math.nan))}</td>'
                             if (r.get("scores") or {}).get(e) is not None else '<td class="num">—</td>'
                             for e in evaluators)
            body.append(f'<tr><td>{_esc(r["method"])}</td><td class="out">{_esc(text)}</td>{scores}</tr>')
        if reference:
            ref = reference if len(reference) <= MAX_CHARS else reference[:MAX_CHARS] + " …"
            body.append(f'<tr><td><i>reference</i></td><td class="out muted">{_esc(ref)}</td>'
                        + "<td></td>" * len(evaluators) + "</tr>")
        blocks.append(f"<h3>{_esc(title)}{_esc(prompt[:300])}</h3><table class=\"sbs\"><tr><th>method</th>"
                      f"<th>output (first sample)</th>{head}</tr>{''.join(body)}</table>")
    more = len({_item_key(r) for r in run.outputs}) - len(items)
    if more > 0:
        blocks.append(f'<p class="muted">{more} more prompts in {_esc(run.path / "outputs.jsonl")}</p>')
    return "".join(blocks)


def _validity_html(run: RunData) -> str:
    from personalign.evaluation.authors_benchmark import validity_line

    rows = [r for r in run.metrics if r.get("kind") == "judge_validity"]
    if not rows and not run.summary.get("judge"):
        return ""
    line = validity_line(run.summary) if run.summary.get("judge") else f"authorship judge: {len(rows)} authors"
    detail = ", ".join(f"author {r['author']}: {r['auc']:.2f}" for r in rows)
    return f'<div class="validity"><b>{_esc(line)}</b><br><span class="muted">{_esc(detail)}</span></div>'


def render_run(run: RunData, index: int) -> tuple[str, list[str]]:
    """HTML section of one run and the ids of the charts it contains."""
    charts: list[str] = []
    parts = [f'<section class="run" id="run-{index}"><h2>{_esc(run.name)}</h2>',
             f'<p class="muted">{_esc(run.path)}</p>', _validity_html(run)]
    if run.methods:
        parts += ["<h3>Summary</h3>", _summary_table(run)]
    for evaluator in run.evaluators[:1]:
        parts.append(_vs_table(run, evaluator))
    for evaluator in run.evaluators:
        made = winrate_chart(run, evaluator)
        if made:
            chart_id = f"chart-{index}-winrate-{evaluator}"
            parts.append(_figure(chart_id, made[0], f"win-rate matrix ({evaluator})"))
            charts.append(chart_id)
    for chart_id, png, caption in [
        (f"chart-{index}-scores", scores_chart(run), "mean score per method and evaluator"),
        (f"chart-{index}-compliance", compliance_chart(run), "constraint compliance per method"),
        (f"chart-{index}-lengths", length_chart(run), "length distribution per method"),
    ]:
        if png:
            parts.append(_figure(chart_id, png, caption))
            charts.append(chart_id)
    if run.training:
        parts.append("<h3>Training curves</h3>")
        for t_index, (label, rows) in enumerate(run.training.items()):
            png = training_chart(label, rows)
            if png:
                chart_id = f"chart-{index}-training-{t_index}"
                parts.append(_figure(chart_id, png, f"training curves: {label}"))
                charts.append(chart_id)
    if run.outputs:
        parts += ["<h3>Side by side</h3>", _side_by_side(run)]
    parts.append("</section>")
    return "".join(parts), charts


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write one self-contained HTML report over `run_dirs` to `out`, and `out` with .md (Markdown summary)."""
    if not run_dirs:
        raise PersonalignError("report: pass at least one run dir")
    runs = [load_run(p) for p in run_dirs]
    sections, charts = [], []
    for index, run in enumerate(runs):
        html_part, ids = render_run(run, index)
        sections.append(html_part)
        charts += ids
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    methods = sorted({m for r in runs for m in r.methods})
    document = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>personalign report</title>'
        f"<style>{CSS}</style></head><body><h1>personalign report</h1>"
        f'<p class="muted">{len(runs)} run(s), methods: {_esc(", ".join(methods))}; written {stamp}; '
        f"{len(charts)} charts</p>{''.join(sections)}</body></html>\n"
    )
    out = Path(out)
    atomic_write_text(out, document)
    atomic_write_text(out.with_suffix(".md"), markdown_summary(runs))
    return out


def markdown_summary(runs: list[RunData] | list[Path]) -> str:
    """Terminal/PR summary: per run, the judge validity line, the method table, win rates vs base and prompt."""
    loaded = [r if isinstance(r, RunData) else load_run(r) for r in runs]
    lines = ["# personalign summary", ""]
    for run in loaded:
        lines += [f"## {run.name}", ""]
        if run.summary.get("judge"):
            from personalign.evaluation.authors_benchmark import validity_line

            lines += [validity_line(run.summary), ""]
        summaries = run.method_summaries()
        columns = list(dict.fromkeys(k for m in run.methods for k, v in summaries.get(m, {}).items()
                                     if isinstance(v, int | float) and not isinstance(v, bool)))
        if run.methods:
            lines += ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
            for m in run.methods:
                lines.append(f"| {m} | " + " | ".join(_fmt_md(summaries.get(m, {}).get(c)) for c in columns) + " |")
            lines.append("")
        if run.evaluators:
            evaluator = run.evaluators[0]
            per = per_prompt_scores(run.outputs, evaluator, key="item")
            for baseline in ("base", "prompt"):
                if baseline not in per:
                    continue
                wins = []
                for m in [m for m in run.methods if m in per and m != baseline]:
                    keys, a, b = paired(per, m, baseline)
                    groups = [k.split("|", 1)[0] for k in keys] if any(k.split("|", 1)[0] for k in keys) else None
                    wins.append(f"{m} {pairwise_winrate(a, b, n_boot=1000, groups=groups)}")
                if wins:
                    lines += [f"win rate vs {baseline} ({evaluator}): " + "; ".join(wins), ""]
    return "\n".join(lines) + "\n"


def _fmt_md(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")
    return "—" if value is None else str(value)
