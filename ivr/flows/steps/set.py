"""`set`: give variables values, and remember fields of the contact for their next visit.

    remember_language:
      kind: set
      vars:
        language: "{{ vars.answer | lower }}"
      contact:                       # saved in contact memory; read later as contact.language
        language: "{{ vars.answer | lower }}"
      next: by_language
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ivr.flows.step import (
    RESERVED_CONTACT_FIELDS,
    Run,
    Step,
    StepId,
    StepResult,
    VarName,
    register_step,
)
from ivr.flows.templates import Template


@register_step
class SetStep(Step):
    kind: Literal["set"]
    vars: dict[VarName, Template] = Field(default_factory=dict, max_length=50)
    contact: dict[VarName, Template] = Field(default_factory=dict, max_length=50)
    next: StepId

    exit_fields = ("next",)

    @field_validator("contact")
    @classmethod
    def _not_reserved(cls, fields: dict[str, Template]) -> dict[str, Template]:
        reserved = sorted(set(fields) & RESERVED_CONTACT_FIELDS)
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be saved: the engine sets it")
        return fields

    async def run(self, run: Run) -> StepResult:
        for name, template in self.vars.items():
            run.vars[name] = template.render(run.variables)
        for name, template in self.contact.items():
            run.save_contact_field(name, template.render(run.variables))
        return self.next
