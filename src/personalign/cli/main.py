"""`personalign` command: every sub-command lives in its own module and registers itself here."""

from __future__ import annotations

from personalign.cli import evaluate as evaluate_cli
from personalign.cli import export as export_cli
from personalign.cli import feedback as feedback_cli
from personalign.cli import generate
from personalign.cli import judge as judge_cli
from personalign.cli import personalize as personalize_cli
from personalign.cli import prefbench as prefbench_cli
from personalign.cli import profile as profile_cli
from personalign.cli import reward as reward_cli
from personalign.cli import serve as serve_cli
from personalign.cli import studio as studio_cli
from personalign.cli.common import PersonalignTyper

app = PersonalignTyper(
    name="personalign",
    help="Personalize a language model to one person, and measure how well each way works.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_version_option()

# Each module adds its commands (or a sub-app) to `app`; one line per module keeps ownership clear.
generate.register(app)
evaluate_cli.register(app)
personalize_cli.register(app)
judge_cli.register(app)
reward_cli.register(app)
prefbench_cli.register(app)
profile_cli.register(app)
studio_cli.register(app)
feedback_cli.register(app)
serve_cli.register(app)
export_cli.register(app)

if __name__ == "__main__":
    app()
