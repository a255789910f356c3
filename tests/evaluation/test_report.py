"""The HTML report: self-contained, parses as HTML, shows every method and chart; one Chromium screenshot."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from personalign.errors import PersonalignError
from personalign.evaluation.report import load_run, markdown_summary, write_report
from personalign.io import atomic_write_jsonl, atomic_write_yaml

METHODS = ["base", "prompt", "sft"]
GOOD = "Hi Dana,\n\nThank you for the note. I am free Monday at 10am Pacific.\n\nWarmly,\nMaya"
BAD = "- bullet one\n- bullet two — with an em dash [Your Name]"


def write_compare_run(root: Path, profile: Path) -> Path:
    """A run dir in the shape `evaluation.compare` writes, plus a training sub-run with loss/KL curves."""
    run = root / "compare-1"
    prompts = ["Reply to Dana about a phone screen.", "Thank Dr. Fox for visiting <our> class & more."]
    rows = [{"prompt": p, "method": m, "sample": 0, "seed": 0, "output": GOOD if m == "sft" else BAD}
            for p in prompts for m in METHODS]
    atomic_write_jsonl(run / "outputs.jsonl", rows)
    atomic_write_jsonl(run / "metrics.jsonl", [
        {"kind": "method_summary", "method": m, "n": 2, "compliance": 1.0 if m == "sft" else 0.0,
         "pass_sign_off": 1.0 if m == "sft" else 0.0, "mean_words": 20.0, "seconds": 1.5} for m in METHODS
    ])
    atomic_write_yaml(run / "config.yaml", {"profile": str(profile), "methods": METHODS})
    atomic_write_jsonl(run / "methods" / "sft" / "metrics.jsonl", [
        {"step": s, "loss": 2.0 / (s + 1), "kl": 0.01 * s, "reward_hacking_rate": 0.0} for s in range(5)
    ])
    return run


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_html_with_every_method_and_chart(tmp_path, example_profile_path):
    run = write_compare_run(tmp_path, example_profile_path)
    out = write_report([run], tmp_path / "report.html")
    document = out.read_text(encoding="utf-8")
    parser = Collector()
    parser.feed(document)
    parser.close()
    text = " ".join(parser.text)
    for method in METHODS:
        assert method in text
    figures = {a["id"] for tag, a in parser.tags if tag == "figure"}
    expected = {"chart-0-winrate-rules", "chart-0-scores", "chart-0-compliance", "chart-0-lengths",
                "chart-0-training-0"}
    assert expected <= figures
    images = [a["src"] for tag, a in parser.tags if tag == "img"]
    assert len(images) == len(figures) and all(src.startswith("data:image/png;base64,") for src in images)
    # No external assets: nothing is fetched from anywhere.
    assert not [a for tag, a in parser.tags if tag in ("script", "link")]
    assert "http://" not in document and "https://" not in document
    assert "&lt;our&gt; class &amp; more" in document  # outputs and prompts are escaped
    # Rules scored the raw outputs: sft (compliant) beats base on every prompt.
    assert "sft" in text and "100% [100%, 100%] (W2/T0/L0)" in text
    summary = out.with_suffix(".md").read_text()
    assert "| sft |" in summary and "win rate vs base (rules)" in summary


def test_report_reads_author_benchmark_rows_with_scores(tmp_path):
    run = tmp_path / "authors-1"
    rows = [{"author": a, "prompt": "p", "reference": "ref text", "method": m, "sample": 0, "output": f"{m} out",
             "scores": {"authorship": {"base": 0.2, "prompt": 0.4}[m] + 0.1 * a, "rouge_l": 0.1}}
            for a in (0, 1) for m in ("base", "prompt")]
    atomic_write_jsonl(run / "outputs.jsonl", rows)
    atomic_write_jsonl(run / "metrics.jsonl", [{"kind": "judge_validity", "author": a, "auc": 0.9} for a in (0, 1)])
    loaded = load_run(run)
    assert loaded.evaluators == ["authorship", "rouge_l"]
    md = markdown_summary([loaded])
    assert "win rate vs base (authorship): prompt 100%" in md
    document = write_report([run], tmp_path / "r.html").read_text()
    assert "chart-0-winrate-authorship" in document and "author 0: p" in document and "ref text" in document


def test_missing_or_empty_run_dir_is_one_clear_error(tmp_path):
    with pytest.raises(PersonalignError, match="run dir not found"):
        write_report([tmp_path / "nope"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersonalignError, match=r"no outputs\.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(tmp_path, example_profile_path):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium')")
    out = write_report([write_compare_run(tmp_path, example_profile_path)], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    # A blank page is one colour; a rendered report has text and charts (many distinct grey levels).
    assert len(set(image.getdata())) > 50


def test_report_command_writes_html_and_markdown(tmp_path, example_profile_path):
    from typer.testing import CliRunner

    from personalign.cli.main import app

    run = write_compare_run(tmp_path, example_profile_path)
    out = tmp_path / "out" / "r.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert "| sft |" in result.output and str(out) in result.output.replace("\n", "")
    help_text = CliRunner().invoke(app, ["eval", "authors", "--help"]).output
    assert "--dataset" in help_text and "--quick" in help_text
