"""Speaks on voice (`<Say>`), sends a message on messaging.

```yaml
greet:
  kind: say
  text: "Thanks for calling."                      # both channels
  messaging: "Thanks, we got your message."        # optional: this channel's own text
  language: en-GB                                  # optional, voice: spoken in this language
  next: lookup
```

`voice:` and `messaging:` override `text` on their channel; a step needs at least one of the three.
`language` (a tag such as `en-US`, `es-ES`, `fr-FR`) is the `<Say>`'s language on voice.
A text that renders empty says nothing: a step with only `messaging:` is silent on voice.
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

    reference_order = 30
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
