"""Errors that cross module boundaries, each carrying where it happened."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One broken rule: `where` names the parameter or metadata path, `rule` says what is wrong."""

    where: str
    rule: str

    def __str__(self) -> str:
        return f"{self.where}: {self.rule}"


class InvalidMetadata(Exception):
    """A metadata snapshot was rejected as a whole; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
