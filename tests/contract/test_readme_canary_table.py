"""The README's canary table is what the interval formula prints (regenerate: paste
``python -c "from adapter.canary_interval import requests_table; print(requests_table())"``)."""

from __future__ import annotations

from pathlib import Path

from adapter.canary_interval import requests_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_matches_the_formula() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- canary-table:start -->\n") + len("<!-- canary-table:start -->\n")
    end = text.index("\n<!-- canary-table:end -->")
    assert text[start:end] == requests_table()
