"""One error type for everything a user can get wrong: the problem and the fix."""
from __future__ import annotations


class NemoTrtError(Exception):
    """A user-facing failure. The CLI prints `problem` and `fix` and exits with `exit_code`."""

    def __init__(self, problem: str, fix: str | None = None, exit_code: int = 2):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\nFix: {self.fix}"

    def to_dict(self) -> dict:
        return {"error": self.problem, "fix": self.fix, "exit_code": self.exit_code}
