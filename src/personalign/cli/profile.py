"""`personalign profile infer`: an editable profile (YAML) from a person's own texts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import Field

from personalign.cli.common import ConfigOpt, DeviceOpt, PersonalignTyper, check_device, console, takes_config
from personalign.config import Config, resolve_config
from personalign.errors import PersonalignError
from personalign.profiles.infer import InferConfig

profile_app = PersonalignTyper(name="profile", help="Build and inspect profiles.", no_args_is_help=True)


class ProfileInferConfig(Config):
    """Resolved settings of one `profile infer`."""

    texts: str = Field(description="JSONL (text/body/output [+ subject, prompt]) or a folder of .txt/.eml")
    out: str = Field("profile.yaml", description="profile YAML to write")
    name: str = Field("Me", description="the person's name as the profile should say it")
    task: str = "write emails"
    n_demos: int = Field(7, ge=1, description="texts kept as demonstrations (DITTO uses 7)")
    n_eval: int | None = Field(None, ge=0, description="texts held out as eval prompts with references; "
                                                       "None = 20 % (at most 12) when there are ≥ 10 texts")
    llm: str | None = Field(None, description="model that writes a style description (any backend); off by default")
    device: str = "auto"
    seed: int = 0
    infer: InferConfig = Field(default_factory=InferConfig)


@profile_app.command("infer")
@takes_config("personalign.cli.profile:ProfileInferConfig")
def infer(
    texts: Annotated[Path | None, typer.Option("--texts", help="JSONL file or folder of .txt/.eml files")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="profile YAML to write")] = None,
    name: Annotated[str | None, typer.Option("--name", help="the person's name")] = None,
    task: Annotated[str | None, typer.Option("--task", help="e.g. 'write emails'")] = None,
    n_demos: Annotated[int | None, typer.Option("--n-demos", help="texts kept as demonstrations")] = None,
    n_eval: Annotated[int | None, typer.Option("--n-eval", help="texts held out as eval prompts")] = None,
    llm: Annotated[str | None, typer.Option("--llm", help="model for a style description")] = None,
    device: DeviceOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="which texts become demonstrations")] = None,
    config: ConfigOpt = None,
) -> None:
    """Infer constraints and rules from a person's texts and write a profile you can edit."""
    from personalign.io import atomic_write_text
    from personalign.judges.rules import compliance
    from personalign.profiles.infer import infer_profile, read_texts

    if texts is None and config is None:
        raise PersonalignError("profile infer: pass --texts FILE_OR_FOLDER (JSONL, or .txt/.eml files)")
    cfg = resolve_config(ProfileInferConfig, config, {
        "texts": str(texts) if texts else None, "out": str(out) if out else None, "name": name, "task": task,
        "n_demos": n_demos, "n_eval": n_eval, "llm": llm, "device": device, "seed": seed})
    check_device(cfg.device)
    items = read_texts(cfg.texts)
    n_eval = cfg.n_eval if cfg.n_eval is not None else (min(12, len(items) // 5) if len(items) >= 10 else 0)
    if len(items) - n_eval < 3:
        raise PersonalignError(f"{cfg.texts}: {len(items)} texts leave {len(items) - n_eval} to infer from; "
                               "give at least 3 (or lower --n-eval)")
    order = list(range(len(items)))
    random.Random(cfg.seed).shuffle(order)
    held = [items[i] for i in order[:n_eval]]
    infer_side = [items[i] for i in order[n_eval:]]
    style = None
    if cfg.llm:
        from personalign.backends.registry import build_backend
        from personalign.config import ModelConfig
        from personalign.profiles.infer import describe_style

        style = describe_style(build_backend(ModelConfig(model=cfg.llm, device=cfg.device)),
                               [t.text for t in infer_side], cfg.name, seed=cfg.seed)
    # Constraints from every text on the inference side; the first n_demos of them become demonstrations.
    profile, inference = infer_profile(infer_side, cfg.name, cfg.task, cfg.infer, style, eval_texts=held)
    profile.demonstrations = profile.demonstrations[: cfg.n_demos]
    from personalign.profiles.loading import demonstration_failures

    failing = demonstration_failures(profile)
    if failing:
        # The person's own texts are the ground truth: keep them, and say which break the inferred constraints.
        profile.accept_failing_demonstrations = True
        console.print(f"note: {len({i for i, _, _ in failing})} demonstration(s) break the inferred constraints "
                      f"({', '.join(sorted({c for _, c, _ in failing}))}); kept with accept_failing_demonstrations",
                      highlight=False)
    header = [f"# Inferred by `personalign profile infer` from {len(infer_side)} texts of {cfg.texts}.",
              "# Edit freely. Evidence behind each constraint:"]
    header += [f"#   {key}: {value}" for key, value in inference.evidence.items()]
    body = yaml.safe_dump(profile.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                          allow_unicode=True, width=100)
    path = atomic_write_text(Path(cfg.out), "\n".join(header) + "\n" + body)
    c = profile.constraints
    console.print(f"profile: [bold]{path}[/] ({len(profile.demonstrations)} demonstrations, "
                  f"{len(profile.eval_prompts)} eval prompts, sign-off {c.sign_off!r}, "
                  f"{c.min_words}-{c.max_words} words, banned {c.banned_substrings})", highlight=False)
    if held:
        report = compliance([t.text for t in held], c)
        console.print(f"validity: the inferred constraints pass on {report.rate:.0%} of {len(held)} held-out texts "
                      f"of this person (target ≥ 90 %)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
