"""`personalign bench` and `personalign data characterize`: the prefbench study from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from personalign.cli.common import ConfigOpt, PersonalignTyper, console, split_csv, takes_config
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


def _set_flags(items: list[str] | None) -> dict[str, str]:
    """Errors about a `--set KEY=VALUE` field name it as the user typed it."""
    from personalign.prefbench.config import parse_set_options

    return {key: f"--set {key}" for key in parse_set_options(items)}


def check_bench_names(datasets: list[str], methods: list[str]) -> None:
    """Unknown data set or method names, with the closest valid one, before anything is created."""
    from personalign.config import suggest
    from personalign.prefbench.config import ALL_METHODS, EXTRA_METHODS
    from personalign.prefbench.data import DATASETS

    for name in datasets:
        if name not in DATASETS and not name.endswith((".jsonl", ".json")):
            raise PersonalignError(f"--dataset: unknown data set {name!r}{suggest(name, DATASETS)}; choose from "
                                   f"{', '.join(DATASETS)} or give a .jsonl in the prefbench schema")
    known = (*ALL_METHODS, *EXTRA_METHODS)
    for name in methods:
        if name != "all" and name not in known:
            raise PersonalignError(f"--methods: unknown method {name!r}{suggest(name, known)}; choose from all, "
                                   f"{', '.join(known)}")


def check_bench_inputs(cfg: Any) -> None:
    """Names (also from --config), and every target run dir, are checked before anything is created."""
    from personalign.runs import check_run_target

    check_bench_names(cfg.dataset, cfg.methods)
    if cfg.resume and not cfg.out:
        raise PersonalignError("--resume: pass --out RUN_DIR (the bench run to continue)")
    if cfg.out:
        root = Path(cfg.out)
        if cfg.resume and not root.is_dir():
            raise PersonalignError(f"--resume: {root} holds no run to resume; drop --resume to start it fresh")
        targets = [root] if len(cfg.dataset) == 1 else [root / Path(d).stem for d in cfg.dataset]
        for target in targets:
            check_run_target(target, "bench", cfg.resume and target.is_dir())


def register(app: typer.Typer) -> None:
    data_app = PersonalignTyper(help="Inspect preference data sets.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("characterize")
    @takes_config("personalign.prefbench.config:CharacterizeConfig")
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

        if out and Path(out).is_dir():
            raise PersonalignError(f"--out {out}: is a folder; pass the JSON file to write, e.g. {out}/report.json")
        cfg = resolve_config(CharacterizeConfig, config, {
            "dataset": dataset, "split": split, "out": out, "data_dir": data_dir, "data_path": data_path,
            **parse_set_options(set_),
        }, flags=_set_flags(set_))
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
    @takes_config("personalign.prefbench.config:BenchConfig")
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
        out: Annotated[str | None, typer.Option("--out", help="the run dir to write: new or empty (results.json, "
                                                              "table.md, plots; one sub-folder per data set)")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="random seed (data split, training)")] = None,
        tax: Annotated[bool | None, typer.Option("--tax/--no-tax", help="score the tax sets")] = None,
        adaptation: Annotated[bool | None, typer.Option("--adaptation/--no-adaptation",
                                                        help="few-shot adaptation to held-out users")] = None,
        ks: Annotated[str | None, typer.Option("--ks", help="comma list of k for adaptation")] = None,
        resume: Annotated[bool | None, typer.Option(
            "--resume", help="continue the run in --out: finished methods with the same settings are reused")] = None,
        data_dir: DataDirOpt = None,
        data_path: DataPathOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Benchmark personalized preference learning: accuracy per user, minority users, tax, adaptation."""
        from personalign.prefbench.bench import run_bench
        from personalign.prefbench.config import BenchConfig, parse_set_options
        from personalign.prefbench.report import method_table

        check_bench_names(split_csv(dataset) or [], split_csv(methods) or [])
        cfg = resolve_config(BenchConfig, config, {
            "dataset": split_csv(dataset), "methods": split_csv(methods), "backbone": backbone,
            "embedder_dtype": embedder_dtype, "quick": quick,
            "out": out, "seed": seed, "tax": tax, "adaptation": adaptation,
            "ks": _ints(split_csv(ks), "--ks"), "resume": resume, "data_dir": data_dir,
            "data_path": data_path, **parse_set_options(set_),
        }, defaults={"resume": False}, flags=_set_flags(set_))  # an existing run is continued only with --resume
        check_bench_inputs(cfg)
        results = run_bench(cfg)
        for name, r in results.items():
            console.print(f"\n[bold]{name}[/] → {r['run_dir']}")
            console.print(method_table(r), markup=False, highlight=False, soft_wrap=True)
