"""`personalign eval authors` (DITTO's authors), `eval enron` (real people's email) and `personalign report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from personalign.cli.common import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    PersonalignTyper,
    ResumeOpt,
    TempOpt,
    console,
    resolve_run_config,
    split_csv,
    takes_config,
)
from personalign.errors import PersonalignError

eval_app = PersonalignTyper(name="eval", help="Benchmarks with validated judges.", no_args_is_help=True)


def _authors(value: str | None) -> list[int] | str | None:
    """'0,1,2' → [0, 1, 2]; 'all' → the string 'all' (resolved to every id later); None → not given."""
    if value is None:
        return None
    if value.strip().lower() == "all":
        return "all"
    try:
        return [int(part) for part in split_csv(value) or []]
    except ValueError:
        raise PersonalignError(f"--authors {value!r}: expected comma-separated ids (0,1,2) or 'all'") from None


@eval_app.command("authors")
@takes_config("personalign.evaluation.authors_benchmark:AuthorsBenchConfig")
def authors(
    dataset: Annotated[str | None, typer.Option("--dataset", help="cmcc | ccat50")] = None,
    authors_: Annotated[str | None, typer.Option(
        "--authors", help="ids, e.g. 0,1,2, or 'all'", show_default="all (0,1,2 with --quick)")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="e.g. base,prompt,prompt-rag,sft,ditto")] = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="3 authors, short outputs, fast methods")] = None,
    n_prompts: Annotated[int | None, typer.Option("--n-prompts", help="first K test prompts per author")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="tokens per output")] = None,
    temperature: TempOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="sampling and judge seed")] = None,
    llm_judge: Annotated[str | None, typer.Option("--llm-judge", help="model for an extra LLM judge")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="also write report.html")] = True,
    config: ConfigOpt = None,
) -> None:
    """Personalize to each DITTO author, generate for held-out prompts, judge, and print DITTO's win-rate table."""
    from personalign.evaluation.authors_benchmark import AuthorsBenchConfig, run_authors_benchmark, validity_line

    parsed = _authors(authors_)
    cfg = resolve_run_config(
        AuthorsBenchConfig, "eval authors", config,
        {"dataset": dataset, "authors": None if parsed == "all" else parsed, "methods": split_csv(methods),
         "quick": quick, "n_prompts": n_prompts, "out": str(out) if out else None,
         "resume": resume, "data_dir": str(data_dir) if data_dir else None,
         "model.model": model, "model.dtype": dtype, "model.device": device,
         "sampling.max_new_tokens": max_new_tokens, "sampling.temperature": temperature, "sampling.seed": seed,
         "llm_judge": llm_judge},
    )
    if parsed == "all":
        from personalign.profiles.ditto_authors import author_ids

        cfg.authors = author_ids(cfg.dataset, cfg.data_dir)  # explicit 'all' wins over quick's 3 authors
    console.print(f"author benchmark: {cfg.dataset}, methods {', '.join(cfg.resolved_methods())}")
    run, summary = run_authors_benchmark(cfg, echo=lambda line: console.print(line, highlight=False, markup=False))
    console.print(Markdown((run.path / "table.md").read_text(encoding="utf-8")))
    console.print(f"[bold]{validity_line(summary)}[/]", highlight=False)
    console.print(f"run dir: [bold]{run.path}[/]")
    if report:
        from personalign.evaluation.report import write_report

        console.print(f"report: [bold]{write_report([run.path], run.path / 'report.html')}[/]")


@eval_app.command("enron")
@takes_config("personalign.evaluation.enron:EnronBenchConfig", seed="seed")
def enron(
    senders: Annotated[str | None, typer.Option("--senders", help="sender ids, e.g. germany-c,love-p")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="e.g. base,prompt,sft,ditto,ditto+prompt")] = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="3 senders, short outputs")] = None,
    k_demos: Annotated[int | None, typer.Option("--k-demos", help="demonstrations per sender")] = None,
    n_test: Annotated[int | None, typer.Option("--n-test", help="test emails per sender")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="tokens per output")] = None,
    temperature: TempOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="split, sampling and judge seed")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="also write report.html")] = True,
    config: ConfigOpt = None,
) -> None:
    """Personalize to real people's sent email (Enron), generate for held-out emails' prompts, judge, win rates."""
    from personalign.evaluation.authors_benchmark import validity_line
    from personalign.evaluation.enron import EnronBenchConfig, run_enron_benchmark

    cfg = resolve_run_config(
        EnronBenchConfig, "eval enron", config,
        {"senders": split_csv(senders), "methods": split_csv(methods), "quick": quick, "k_demos": k_demos,
         "n_test": n_test, "out": str(out) if out else None, "resume": resume,
         "data_dir": str(data_dir) if data_dir else None, "model.model": model, "model.dtype": dtype,
         "model.device": device, "sampling.max_new_tokens": max_new_tokens, "sampling.temperature": temperature,
         "sampling.seed": seed, "seed": seed},
    )
    console.print(f"enron benchmark: methods {', '.join(cfg.resolved_methods())}")
    run, summary = run_enron_benchmark(cfg, echo=lambda line: console.print(line, highlight=False, markup=False))
    console.print(Markdown((run.path / "table.md").read_text(encoding="utf-8")))
    console.print(f"[bold]{validity_line(summary)}[/]", highlight=False)
    console.print(f"run dir: [bold]{run.path}[/]")
    if report:
        from personalign.evaluation.report import write_report

        console.print(f"report: [bold]{write_report([run.path], run.path / 'report.html')}[/]")


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run dirs written by compare, demo, eval authors, training")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write (a .md summary is written beside it)")] = Path(
        "report.html"
    ),
) -> None:
    """Write one self-contained HTML report (charts embedded) and a Markdown summary over RUN_DIRS."""
    from personalign.evaluation.report import write_report

    check_report_inputs(list(run_dirs), out)
    path = write_report(list(run_dirs), out)
    console.print(path.with_suffix(".md").read_text(encoding="utf-8"), highlight=False, markup=False)
    console.print(f"report: [bold]{path}[/] (summary: {path.with_suffix('.md')})")


def check_report_inputs(run_dirs: list[Path], out: Path) -> None:
    """A report reads finished run dirs and writes one .html file: anything else is a one-line error."""
    from personalign.runs import run_command

    if out.is_dir():
        raise PersonalignError(f"--out {out}: is a folder; pass the HTML file to write, e.g. {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise PersonalignError(f"--out {out}: the report is HTML; pass a path ending in .html")
    for path in run_dirs:
        if not path.is_dir():
            raise PersonalignError(f"{path}: no such run dir; pass folders written by compare, demo, eval or "
                                   "personalize")
        command = run_command(path)
        if command == "bench" or (path / "results.json").is_file():
            raise PersonalignError(f"{path}: a `bench` run; its report is already there (table.md, results.json, "
                                   "plots): report covers compare, demo, eval and personalize runs")
        if not any((path / name).is_file() for name in ("outputs.jsonl", "metrics.jsonl", "summary.json")):
            raise PersonalignError(f"{path}: no outputs.jsonl, metrics.jsonl or summary.json; pass a finished run dir")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command()(report)
