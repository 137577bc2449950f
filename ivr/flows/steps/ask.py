"""Puts a question and waits for the answer: on voice a `<Gather>` that takes keys and speech, on
messaging a message whose reply is the answer.

```yaml
menu:
  kind: ask
  prompt: "For sales, press 1 or say sales. For support, press 2 or say support."
  messaging: "Reply SALES or SUPPORT."   # optional per-channel prompts (also `voice`)
  retry_prompt: "Sorry, I did not get that."   # said before the prompt on a re-ask
  expect: choice                # choice, email, digits, regex or text (default)
  options:                      # choice: the value saved, and the answers that mean it
    sales: ["1", "sales"]
    support: ["2", "support", "help"]
  save: team                    # vars.team = "sales"
  save_to_contact: false        # true: also remember it as contact.team
  max_attempts: 3               # answers tried before giving up (1-10)
  timeout: 5                    # voice: seconds of silence that end the answer (1-60)
  language: en-US               # optional, voice: the prompt's language and the speech recognised
  next: by_team
  on_exhausted: to_operator     # after the last invalid or empty answer
```

What counts as an answer:

- `choice`: the answer's words contain exactly one option's value or one of its answers
  ("sales please" is `sales`; "sales or support" is not an answer). The same answer may not stand
  for two options. Voice stops listening after one key when every key answer is one digit.
- `email`: an address, lower-cased; on voice "jane at example dot com" is understood.
- `digits`: `min_digits` to `max_digits` digits (1 and 20 by default); spaces and dashes are
  ignored. When both are equal, voice stops listening after that many keys.
- `regex`: the whole answer matches `pattern`.
- `text`: anything not empty.

On voice, a full stop, question mark or exclamation mark at the end of the answer is dropped
first: Twilio's speech recognition adds one the caller never said ("1234." is four digits).

An invalid or empty answer (a caller who says nothing) asks again, up to `max_attempts` answers in
all, then goes to `on_exhausted`. `steps.<id>.answer` holds the answer as given and
`steps.<id>.valid` whether it was accepted.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from ivr.flows.actions import Ask
from ivr.flows.step import (
    Language,
    WAIT,
    Run,
    Step,
    StepId,
    StepResult,
    VarName,
    check_contact_fields,
    register_step,
)
from ivr.flows.templates import Template

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_NOT_WORD = re.compile(r"[^\w@.+]+")
_SPOKEN_EMAIL = ((" at ", "@"), (" dot ", "."))


def _words(text: str) -> str:
    """Lower-case words separated by single spaces: "Sales, please." -> "sales please"."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).replace(".", " ").split())


@register_step
class AskStep(Step):
    kind: Literal["ask"]
    prompt: Template
    voice: Template | None = None
    messaging: Template | None = None
    retry_prompt: Template | None = None
    expect: Literal["choice", "email", "digits", "regex", "text"] = "text"
    options: dict[str, list[str]] = Field(default_factory=dict, max_length=20)
    min_digits: int = Field(default=1, ge=1, le=50)
    max_digits: int = Field(default=20, ge=1, le=50)
    pattern: str | None = Field(default=None, max_length=500)
    save: VarName | None = None
    save_to_contact: bool = False
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout: int = Field(default=5, ge=1, le=60, description="voice: seconds of silence")
    language: Language | None = None
    next: StepId
    on_exhausted: StepId

    reference_order = 60
    exit_fields = ("next", "on_exhausted")
    waits = True
    records = ("answer", "valid")

    @model_validator(mode="after")
    def _expectation_is_complete(self) -> AskStep:
        if self.expect == "choice":
            if not self.options:
                raise ValueError("`expect: choice` needs `options`")
            seen: dict[str, str] = {}
            for value, answers in self.options.items():
                for answer in [value, *answers]:
                    key = _words(answer)
                    if seen.setdefault(key, value) != value:
                        raise ValueError(f"answer {answer!r} is given for both "
                                         f"{seen[key]!r} and {value!r}")
        elif self.options:
            raise ValueError("`options` only go with `expect: choice`")
        if self.expect == "regex":
            if self.pattern is None:
                raise ValueError("`expect: regex` needs `pattern`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: invalid regular expression: {exc}") from None
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits is larger than max_digits")
        if self.save_to_contact:
            if self.save is None:
                raise ValueError("save_to_contact needs `save`")
            check_contact_fields([self.save])
        return self

    def vars_set(self) -> frozenset[str]:
        return frozenset() if self.save is None else frozenset({self.save})

    def answers_are_choices(self) -> bool:
        return self.expect == "choice"

    async def run(self, run: Run) -> StepResult:
        run.attempts[run.current_step] = 0
        self._ask(run, retry=False)
        return WAIT

    async def resume(self, run: Run, answer: str | None) -> StepResult:
        step_id = run.current_step
        value = self.interpret(answer or "", run.contact.channel)
        run.steps[step_id] = {"answer": answer, "valid": value is not None}
        if value is not None:
            if self.save is not None:
                run.vars[self.save] = value
                if self.save_to_contact:
                    run.save_contact_field(self.save, value)
            return self.next
        run.attempts[step_id] = run.attempts.get(step_id, 0) + 1
        if run.attempts[step_id] >= self.max_attempts:
            return self.on_exhausted
        self._ask(run, retry=True)
        return WAIT

    def interpret(self, answer: str, channel: str) -> str | None:
        """The value an answer stands for, or None when it is not a valid answer."""
        text = answer.strip()
        if channel == "voice":
            # Speech recognition ends what it heard with a full stop (or ? or !) the caller
            # never said: "jane at example dot com." is an email, "1234." four digits.
            text = text.rstrip(".?!").rstrip()
        if not text:
            return None
        if self.expect == "choice":
            said = f" {_words(text)} "
            matches = {value for value, answers in self.options.items()
                       if any(f" {_words(a)} " in said for a in [value, *answers])}
            return matches.pop() if len(matches) == 1 else None
        if self.expect == "email":
            candidate = text.casefold()
            if channel == "voice":  # "jane at example dot com"
                for spoken, written in _SPOKEN_EMAIL:
                    candidate = candidate.replace(spoken, written)
                candidate = candidate.replace(" ", "")
            return candidate if _EMAIL.fullmatch(candidate) else None
        if self.expect == "digits":
            digits = re.sub(r"[\s\-]", "", text)
            ok = digits.isdigit() and self.min_digits <= len(digits) <= self.max_digits
            return digits if ok else None
        if self.expect == "regex":
            return text if re.fullmatch(self.pattern or "", text) else None
        return text

    def _ask(self, run: Run, retry: bool) -> None:
        template = getattr(self, run.contact.channel) or self.prompt
        prompt = template.render(run.variables).strip()
        if retry and self.retry_prompt is not None:
            prompt = f"{self.retry_prompt.render(run.variables).strip()} {prompt}".strip()
        run.emit(Ask(prompt, max_digits=self._max_digits(), timeout=self.timeout,
                     language=self.language))

    def _max_digits(self) -> int | None:
        """Stop listening as soon as a full answer is keyed, when its length is known."""
        if self.expect == "digits":
            return self.max_digits if self.min_digits == self.max_digits else None
        if self.expect == "choice":
            keys = [a for answers in self.options.values() for a in answers if a.isdigit()]
            if keys and all(len(k) == 1 for k in keys):
                return 1
        return None


