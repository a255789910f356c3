"""Can the general HH signal alone lift vanilla above chance on the tax sets? Vanilla trained on HH pairs only.

    python bench/prefbench_general.py --max-pairs 2000,100000 --out bench/results/prefbench_general.json

The bench's defaults (MiniLM backbone, tax sets, seed) with no user data: each `--max-pairs` value loads that
many general pairs (half helpful, half harmless, minus those overlapping the tax sets), trains vanilla on them
alone and scores it per tax category, beside the untrained backbone's zero-shot accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from personalign.io import atomic_write_json
from personalign.prefbench.bench import _encoder
from personalign.prefbench.config import BenchConfig
from personalign.prefbench.data.general import disjoint_from, load_general
from personalign.prefbench.data.tax import load_tax_sets
from personalign.prefbench.evaluate import by_category, margin_tax, tax_scores
from personalign.prefbench.features import featurize_general, featurize_tax
from personalign.prefbench.methods import make_method, options_field


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pairs", default="2000,100000")
    parser.add_argument("--out", type=Path, default=Path("bench/results/prefbench_general.json"))
    args = parser.parse_args()
    cfg = BenchConfig()
    encoder = _encoder(cfg.backbone, cfg.embedder_dtype)
    tax_pairs = load_tax_sets(cfg.data_dir, cfg.tax_max_per_source, cfg.seed)
    tax = featurize_tax(tax_pairs, encoder.encode, cfg.max_prompt_chars, seed=cfg.seed)
    report: dict = {"untrained_backbone": margin_tax(tax.untrained_margins, tax.categories), "runs": []}
    for n in (int(v) for v in args.max_pairs.split(",")):
        pairs, dropped = disjoint_from(load_general(cfg.data_dir, n, cfg.seed), tax_pairs)
        general = featurize_general(pairs, encoder.encode, cfg.max_prompt_chars)
        vanilla = make_method("vanilla", getattr(cfg.options, options_field("vanilla")), cfg.train, cfg.seed)
        vanilla.fit(general, 1, None)
        row = {"max_pairs": n, "n_pairs": len(pairs), "dropped_overlapping_tax": dropped,
               "vanilla_tax_accuracy": by_category(tax_scores(vanilla, tax.pairs, 1), tax.categories)}
        report["runs"].append(row)
        print(row, flush=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
