"""`say`: speak to the caller, or reply to the sender.

    greet:
      kind: say
      text: "Thanks for calling."                      # both channels
      messaging: "Thanks, we got your message."        # optional: this channel's own text
      language: en-GB                                  # optional, voice: spoken in this language
      next: lookup
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ivr.flows.actions import Say
from ivr.flows.step import Language, Run, Step, StepId, register_step
from ivr.flows.templates import Template


@register_step
class SayStep(Step):
    kind: Literal["say"]
    text: Template | None = None
    voice: Template | None = None
    messaging: Template | None = None
    language: Language | None = None
    next: StepId

    exit_fields = ("next",)

    @model_validator(mode="after")
    def _has_some_text(self) -> SayStep:
        if self.text is None and self.voice is None and self.messaging is None:
            raise ValueError("a say step needs text, voice or messaging")
        return self

    async def run(self, run: Run) -> str | None:
        template = getattr(self, run.contact.channel) or self.text
        if template is not None:
            text = template.render(run.variables).strip()
            if text:  # an empty rendering says nothing rather than an empty <Say>
                run.emit(Say(text, self.language))
        return self.next
