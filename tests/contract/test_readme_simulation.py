"""The README's simulation figures are the generated ones (``make simulation-report``), never typed."""

from __future__ import annotations

from pathlib import Path

from adapter.simulate.report import BEGIN, END, embed

ROOT = Path(__file__).parents[2]


def _block(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)]


def test_readme_block_is_the_generated_report() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    report = (ROOT / "docs" / "simulation.md").read_text(encoding="utf-8")
    block = _block(readme)
    # Same text, except that the plot is referenced from the README's folder.
    assert block.strip() == report.replace("](simulation.png)", "](docs/simulation.png)").strip()
    assert "| SLO-violation minutes |" in block and "**Goals**" in block


def test_embed_replaces_only_the_marked_block() -> None:
    doc = f"before\n{BEGIN}\nold\n{END}\nafter\n"
    assert embed(doc, "new\n") == f"before\n{BEGIN}\nnew\n{END}\nafter\n"
