"""Gives variables values, and remembers fields of the contact for their next visit.

```yaml
remember_language:
  kind: set
  vars:
    language: "{{ vars.answer | lower }}"
  contact:                      # saved in contact memory; read later as contact.language
    language: "{{ vars.answer | lower }}"
  next: by_language
```

Values are templates, so they are text. `contact:` cannot set `number`, `address`, `channel`,
`is_returning`, `first_seen` or `last_seen`: the engine sets those.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ivr.flows.step import (
    Run,
    Step,
    StepId,
    StepResult,
    VarName,
    check_contact_fields,
    register_step,
)
from ivr.flows.templates import Template


@register_step
class SetStep(Step):
    kind: Literal["set"]
    vars: dict[VarName, Template] = Field(default_factory=dict, max_length=50)
    contact: dict[VarName, Template] = Field(default_factory=dict, max_length=50)
    next: StepId

    reference_order = 70
    exit_fields = ("next",)

    @field_validator("contact")
    @classmethod
    def _not_reserved(cls, fields: dict[str, Template]) -> dict[str, Template]:
        check_contact_fields(fields)
        return fields

    def vars_set(self) -> frozenset[str]:
        return frozenset(self.vars)

    async def run(self, run: Run) -> StepResult:
        for name, template in self.vars.items():
            run.vars[name] = template.render(run.variables)
        for name, template in self.contact.items():
            run.save_contact_field(name, template.render(run.variables))
        return self.next
