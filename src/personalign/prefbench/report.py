"""Outputs of a bench run: `results.json`, the paper-shaped markdown table, and matplotlib figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from personalign.io import atomic_write_json, atomic_write_text, save_png
from personalign.runs import RunDir

TAX_ORDER = ("chat", "chat_hard", "safety", "reasoning")


def _fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


NOT_MEASURABLE = "not measurable"


def tax_cell(r: dict[str, Any], cat: str, base_name: str = "vanilla") -> str:
    """`acc (drop [CI])` of one tax category; "not measurable" where the base is at chance."""
    acc = r.get("tax", {}).get(cat)
    if acc is None:
        return "–"
    drop = r.get("tax_drop", {}).get(cat)
    if drop is None:
        return _fmt(acc)
    if not drop["measurable"]:
        return f"{_fmt(acc)} ({NOT_MEASURABLE})"
    lo, hi = drop["drop_ci"]
    return f"{_fmt(acc)} (tax {drop['drop']:+.3f} [{lo:+.3f}, {hi:+.3f}])"


def mean_drop(r: dict[str, Any]) -> str:
    """Mean tax over the measurable categories, or "not measurable" when none is."""
    drops = [d["drop"] for d in r.get("tax_drop", {}).values() if d["measurable"]]
    if not r.get("tax_drop"):
        return "–"
    return f"{np.mean(drops):+.3f}" if drops else NOT_MEASURABLE


def results_json(results: dict[str, Any]) -> dict[str, Any]:
    """The documented results schema (plus timings, baselines and adaptation detail for the curious)."""
    methods = {}
    for name, r in results["methods"].items():
        methods[name] = {
            "mean_acc": r["mean_acc"], "worst_acc": r["worst_acc"], "worst_user": r.get("worst_user"),
            "std_acc": r.get("std_acc"), "minority_acc": r["minority_acc"], "per_user": r["per_user"],
            "n_test_pairs": r.get("n_test_pairs"), "skipped": r.get("skipped", []),
            "tax": r.get("tax", {}), "tax_drop": r.get("tax_drop", {}), "adaptation": r.get("adaptation", {}),
            "adaptation_detail": r.get("adaptation_detail", []), "timing": r.get("timing", {}),
        }
    return {
        "dataset": results["dataset"],
        "methods": methods,
        "skipped_methods": results.get("skipped_methods", {}),
        "general": results.get("general", {}),
        "characterization": results.get("characterization", {}),
        "users": results["users"],
        "minority_users": results["minority_users"],
        "baselines": results["baselines"],
        "n_pairs": results["n_pairs"],
        "n_texts": results["n_texts"],
        "embedding_cache": results["embedding_cache"],
        "timing": results["timing"],
    }


def method_table(results: dict[str, Any]) -> str:
    """Markdown: one row per method (and the untrained/majority/oracle references) for one data set."""
    methods = results["methods"]
    base = results["baselines"]
    ks = sorted({int(k) for r in methods.values() for k in r.get("adaptation", {})})
    cats = [c for c in TAX_ORDER if any(c in r.get("tax", {}) for r in methods.values())]
    header = ["method", "mean", "worst", "std", "minority", *[f"{c} acc (tax vs vanilla)" for c in cats],
              "mean tax", *[f"k={k}" for k in ks]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    untrained = base.get("untrained_tax")
    for name, r in methods.items():
        label = name + (f" (n={r['n_test_pairs']}; no {', '.join(r['skipped'])})" if r.get("skipped") else "")
        cells = [label, _fmt(r["mean_acc"]), _fmt(r["worst_acc"]), _fmt(r.get("std_acc")), _fmt(r["minority_acc"]),
                 *[tax_cell(r, c) for c in cats], mean_drop(r),
                 *[_fmt(r.get("adaptation", {}).get(str(k))) for k in ks]]
        lines.append("| " + " | ".join(cells) + " |")
    for ref in ("majority_vote", "oracle"):
        accs = list(base[ref].values())
        minority = [base[ref][u] for u in results["minority_users"]]
        cells = [f"*{ref} (test labels)*", _fmt(float(np.mean(accs))), _fmt(min(accs)), _fmt(float(np.std(accs))),
                 _fmt(float(np.mean(minority)) if minority else None), *["–"] * len(cats), "–",
                 *["–"] * len(ks)]
        lines.append("| " + " | ".join(cells) + " |")
    if untrained:
        cells = ["*untrained backbone*", "–", "–", "–", "–", *[_fmt(untrained.get(c)) for c in cats], "–",
                 *["–"] * len(ks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + notes(results)


def notes(results: dict[str, Any]) -> str:
    """The characterization and what the table's columns rest on, in a few lines under it."""
    out = []
    chars = results.get("characterization", {})
    train, test = chars.get("train"), chars.get("test")
    if train and test:
        out.append(f"- characterization: disagreement {_fmt(train['disagreement'])} (train) / "
                   f"{_fmt(test['disagreement'])} (test), consistency {_fmt(train['consistency'])}, minority users "
                   f"(train, leave-one-out majority): {', '.join(train['minority_users']) or 'none'}; room for "
                   f"personalization (test) {_fmt(test['mean_room'])}")
    vanilla = results["methods"].get("vanilla", {}).get("tax_drop", {})
    if vanilla:
        base = ", ".join(f"{c} {d['base_acc']:.3f} [{d['base_ci'][0]:.3f}, {d['base_ci'][1]:.3f}]"
                         + ("" if d["measurable"] else f" ({NOT_MEASURABLE})") for c, d in vanilla.items())
        out.append(f"- tax base (vanilla) accuracy with 95% bootstrap CI: {base}")
    general = results.get("general", {})
    if general.get("enabled"):
        out.append(f"- general signal: {general.get('n_pairs')} HH pairs ({', '.join(general.get('sources', []))}) "
                   f"as one more training pseudo-user; {general.get('dropped_overlapping_tax')} dropped for "
                   "overlapping the tax sets")
    for name, why in results.get("skipped_methods", {}).items():
        out.append(f"- {name}: not run ({why})")
    return ("\n" + "\n".join(out) + "\n") if out else ""


def summary_table(all_results: dict[str, dict[str, Any]]) -> str:
    """Paper-shaped: methods × data sets, each cell `mean / worst / minority / tax`."""
    datasets = list(all_results)
    names = list(dict.fromkeys(n for r in all_results.values() for n in r["methods"]))
    lines = ["| method | " + " | ".join(f"{d} (mean / worst / minority / mean tax)" for d in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for name in names:
        cells = []
        for d in datasets:
            r = all_results[d]["methods"].get(name)
            cells.append("–" if r is None else " / ".join(
                [_fmt(r["mean_acc"]), _fmt(r["worst_acc"]), _fmt(r["minority_acc"]), mean_drop(r)]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_per_user(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    users = results["users"]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(users) + 2), 4))
    x = np.arange(len(users))
    for i, (name, r) in enumerate(methods.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [r["per_user"][u] for u in users], width, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, users, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{results['dataset']}: accuracy per user")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_adaptation(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["methods"].items():
        curve = r.get("adaptation") or {}
        if curve:
            ks = sorted(int(k) for k in curve)
            ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("labeled pairs of the new user (k)")
    ax.set_ylabel("accuracy on the new user's test pairs")
    ax.set_title(f"{results['dataset']}: adaptation to held-out users")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def write_outputs(run: RunDir, results: dict[str, Any], plots: bool = True) -> None:
    run.write_json("results.json", results_json(results))
    table = f"# prefbench: {results['dataset']}\n\n" + method_table(results)
    atomic_write_text(run.path / "table.md", table)
    if plots and results["methods"]:
        plot_per_user(results, run.path / "per_user.png")
        if any(r.get("adaptation") for r in results["methods"].values()):
            plot_adaptation(results, run.path / "adaptation.png")


def write_summary(root: Path, all_results: dict[str, dict[str, Any]]) -> None:
    text = "# prefbench summary\n\n" + summary_table(all_results)
    for d, r in all_results.items():
        text += f"\n## {d}\n\n" + method_table(r)
    atomic_write_text(root / "table.md", text)
    atomic_write_json(root / "summary.json", {d: results_json(r) for d, r in all_results.items()})
