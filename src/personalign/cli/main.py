"""`personalign` command: every sub-command lives in its own module and registers itself here."""

from __future__ import annotations

from personalign.cli import generate
from personalign.cli.common import PersonalignTyper

app = PersonalignTyper(
    name="personalign",
    help="Personalize a language model to one person, and measure how well each way works.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module adds its commands (or a sub-app) to `app`; one line per module keeps ownership clear.
generate.register(app)

if __name__ == "__main__":
    app()
