"""Takes the first matching case, else `else` (required).

```yaml
by_tier:
  kind: branch
  value: vars.tier                  # an expression
  cases:
    - equals: gold                  # compared to `value` ignoring case and surrounding space
      next: to_gold
    - equals: [platinum, plat]      # one of several
      next: to_platinum
    - when: "contact.channel == 'voice' and contact.is_returning"   # any condition
      next: to_voice_team
  else: to_standard
```

A case has exactly one of `equals` and `when`; cases with `equals` need the step's `value`. A
`value` of None (an unset variable) matches no `equals`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ivr.flows.step import Run, Step, StepId, register_step
from ivr.flows.templates import Condition, Expression
from ivr.validation import Where


def _normalize(value: Any) -> str:
    return str(value).strip().casefold()


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    equals: tuple[str, ...] | None = Field(default=None, max_length=50)
    when: Condition | None = None
    next: StepId

    @field_validator("equals", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return (str(value),)
        return value

    @model_validator(mode="after")
    def _exactly_one_test(self) -> Case:
        if (self.equals is None) == (self.when is None):
            raise ValueError("a case needs exactly one of `equals` or `when`")
        if self.equals is not None:
            object.__setattr__(self, "equals", tuple(_normalize(v) for v in self.equals))
        return self

    def matches(self, value: str | None, variables: dict[str, Any]) -> bool:
        if self.equals is not None:
            return value is not None and value in self.equals
        return self.when.evaluate(variables)  # type: ignore[union-attr]


@register_step
class BranchStep(Step):
    kind: Literal["branch"]
    value: Expression | None = None
    cases: list[Case] = Field(min_length=1, max_length=100)
    else_: StepId = Field(alias="else")

    reference_order = 20
    shape = "decision"

    @model_validator(mode="after")
    def _equals_needs_value(self) -> BranchStep:
        if self.value is None and any(case.equals is not None for case in self.cases):
            raise ValueError("cases with `equals` need the step's `value`")
        return self

    def exit_targets(self) -> list[tuple[Where, str]]:
        return [*((("cases", index, "next"), case.next) for index, case in enumerate(self.cases)),
                (("else",), self.else_)]

    def labelled_exits(self) -> list[tuple[str, str]]:
        """Each case labelled with what it tests (`gold, plat`, a condition), then `else`."""
        return [*((", ".join(case.equals) if case.equals is not None
                   else case.when.source, case.next)  # type: ignore[union-attr]
                  for case in self.cases), ("else", self.else_)]

    async def run(self, run: Run) -> str | None:
        value = None
        if self.value is not None:
            raw = self.value.evaluate(run.variables)
            value = None if raw is None else _normalize(raw)
        for case in self.cases:
            if case.matches(value, run.variables):
                return case.next
        return self.else_
