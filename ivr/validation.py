"""Pydantic errors as lines a person can act on: which item, which field, what is wrong."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError


def describe_errors(
    exc: ValidationError, collection: str, item: str, tags: Collection[str] = ()
) -> list[str]:
    """One line per problem, e.g. `step 'lookup': timeout: Input should be greater than 0`.

    `collection` is the field holding named items (`steps`), `item` what one is called (`step`),
    and `tags` the discriminator values pydantic puts in error locations, which are left out.
    """
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_not_found":
            message = f"`kind` is missing; one of: {', '.join(sorted(tags))}"
        elif error["type"] == "union_tag_invalid":
            kind = error.get("ctx", {}).get("tag")
            message = f"unknown kind {kind!r}; one of: {', '.join(sorted(tags))}"
        where = ""
        if len(loc) >= 2 and loc[0] == collection:
            where = f"{item} {loc[1]!r}"
            loc = loc[2:]
            if loc and loc[0] in tags:
                loc = loc[1:]
        field = ".".join(loc)
        if isinstance(error.get("input"), bool):  # `no:` or `equals: yes`, meant as words
            if len(loc) >= 2 and loc[-1] == "[key]":  # the key's place in the mapping says little
                field = ".".join(loc[:-2])
                message = f"a key that YAML read as {str(error['input']).lower()}"
            message += ": YAML reads yes, no, on and off unquoted as true or false; quote them"
        for line in message.splitlines():  # a check that found several problems
            lines.append(": ".join(part for part in (where, field, line) if part))
    return lines
