"""Fixtures shared by every test package: the API contract's JSON schemas.

The schemas live in ``tests/fixtures`` (a copy of the contract the adapter is built against), so tests never
read anything outside the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

FIXTURES = Path(__file__).parent / "fixtures"

SCHEMA_FILES = {
    "value_list": "external-metric-value-list.schema.json",
    "resource_list": "api-resource-list.schema.json",
    "status": "status.schema.json",
}


class Schemas:
    """Draft 2020-12 validators of the API's documents, by short name."""

    def __init__(self) -> None:
        self.validators: dict[str, Draft202012Validator] = {}
        for name, filename in SCHEMA_FILES.items():
            schema = json.loads((FIXTURES / filename).read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
            self.validators[name] = Draft202012Validator(schema)

    def errors(self, name: str, document: Any) -> list[str]:
        """Every violation of schema ``name`` by ``document``, as readable lines (empty when valid)."""
        return [
            f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in sorted(self.validators[name].iter_errors(document), key=lambda e: list(e.path))
        ]

    def check(self, name: str, document: Any) -> None:
        problems = self.errors(name, document)
        assert not problems, f"document does not match {SCHEMA_FILES[name]}:\n" + "\n".join(
            problems) + f"\ndocument: {json.dumps(document)[:2000]}"


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()
