"""`personalign bench` and `personalign data characterize`: the prefbench study from the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from personalign.cli.common import ConfigOpt, console, split_csv
from personalign.config import resolve_config
from personalign.errors import PersonalignError

DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="root of the shared data sets")]
DataPathOpt = Annotated[str | None, typer.Option("--data-path", help="local copy of a hub set, in the hub's schema")]
SetOpt = Annotated[list[str] | None,
                   typer.Option("--set", help="any config field: --set options.personalized.alpha=0.7")]


def _ints(values: list[str] | None, flag: str) -> list[int] | None:
    if not values:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        got = ",".join(values)
        raise PersonalignError(f"{flag}: expected whole numbers separated by commas, got {got!r}") from None


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Inspect preference data sets.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("characterize")
    def characterize_cmd(
        dataset: Annotated[str | None, typer.Option(
            "--dataset", help="dsp, synthetic, psoups, personal_llm, tldr, ultrafeedback, or a .jsonl in the schema",
        )] = None,
        split: Annotated[str | None, typer.Option("--split", help="all, train or test")] = None,
        out: Annotated[str | None, typer.Option("--out", help="also write the report as JSON here")] = None,
        data_dir: DataDirOpt = None,
        data_path: DataPathOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Inter-personal disagreement, intra-personal consistency, minority users, room for personalization."""
        from rich.table import Table

        from personalign.io import atomic_write_json
        from personalign.prefbench.characterize import characterize
        from personalign.prefbench.config import CharacterizeConfig, parse_set_options
        from personalign.prefbench.data import load_prefdata

        cfg = resolve_config(CharacterizeConfig, config, {
            "dataset": dataset, "split": split, "out": out, "data_dir": data_dir, "data_path": data_path,
            **parse_set_options(set_),
        })
        data = load_prefdata(cfg.dataset, cfg.data_dir, cfg.data_path, cfg.synthetic.to_dict(),
                             cfg.max_train_per_user, cfg.max_test_per_user, cfg.seed)
        report = characterize(data, cfg.split)
        fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731 - table cell format
        console.print(f"[bold]{report['dataset']}[/] ({cfg.split}): {report['n_users']} users, "
                      f"{report['n_pairs']} pairs, {report['n_comparisons']} comparisons "
                      f"({report['n_shared_comparisons']} labeled by ≥ 2 users)")
        console.print(f"inter-personal disagreement {fmt(report['disagreement'])} · intra-personal consistency "
                      f"{fmt(report['consistency'])} ({report['n_repeated']} repeated) · mean room for "
                      f"personalization {fmt(report['mean_room'])}")
        table = Table("user", "pairs", "agreement w/ majority", "minority", "oracle acc", "majority acc", "room")
        for user, row in report["per_user"].items():
            table.add_row(user, str(row["n_pairs"]), fmt(row["agreement"]), "yes" if row["minority"] else "",
                          fmt(row["oracle_acc"]), fmt(row["majority_acc"]), fmt(row["room"]))
        console.print(table)
        if cfg.out:
            atomic_write_json(cfg.out, report)
            console.print(f"wrote {cfg.out}")

    @app.command("bench")
    def bench_cmd(
        dataset: Annotated[str | None, typer.Option("--dataset", help="comma list: dsp, synthetic, psoups, "
                                                                      "personal_llm, tldr, ultrafeedback")] = None,
        methods: Annotated[str | None, typer.Option("--methods", help="'all' or a comma list of vanilla, individual, "
                                                                      "conditional, personalized, soups, rm-soup, vpl, "
                                                                      "gpo, gpo-bt, rag, rag-vote (and lora: backbone "
                                                                      "fine-tuning)")] = None,
        backbone: Annotated[str | None, typer.Option("--backbone", help="minilm (packaged) or a "
                                                                        "sentence-transformers model")] = None,
        embedder_dtype: Annotated[str | None, typer.Option("--embedder-dtype", help="auto (bf16 where supported) | "
                                                                            "fp32 | bf16")] = None,
        quick: Annotated[bool | None, typer.Option("--quick/--full", help="small smoke run")] = None,
        out: Annotated[str | None, typer.Option("--out", help="output folder (results.json, table.md, plots)")] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        tax: Annotated[bool | None, typer.Option("--tax/--no-tax", help="score the tax sets")] = None,
        adaptation: Annotated[bool | None, typer.Option("--adaptation/--no-adaptation",
                                                        help="few-shot adaptation to held-out users")] = None,
        ks: Annotated[str | None, typer.Option("--ks", help="comma list of k for adaptation")] = None,
        resume: Annotated[bool | None, typer.Option("--resume/--no-resume",
                                                    help="reuse finished methods found in --out")] = None,
        data_dir: DataDirOpt = None,
        data_path: DataPathOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Benchmark personalized preference learning: accuracy per user, minority users, tax, adaptation."""
        from personalign.prefbench.bench import run_bench
        from personalign.prefbench.config import BenchConfig, parse_set_options
        from personalign.prefbench.report import method_table

        cfg = resolve_config(BenchConfig, config, {
            "dataset": split_csv(dataset), "methods": split_csv(methods), "backbone": backbone,
            "embedder_dtype": embedder_dtype, "quick": quick,
            "out": out, "seed": seed, "tax": tax, "adaptation": adaptation,
            "ks": _ints(split_csv(ks), "--ks"), "resume": resume, "data_dir": data_dir,
            "data_path": data_path, **parse_set_options(set_),
        })
        results = run_bench(cfg)
        for name, r in results.items():
            console.print(f"\n[bold]{name}[/] → {r['run_dir']}")
            console.print(method_table(r), markup=False, highlight=False, soft_wrap=True)
