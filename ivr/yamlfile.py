"""Reading YAML config safely: `safe_load`, and a duplicate key is an error, not a silent overwrite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class YamlFileError(Exception):
    """The file cannot be read or parsed; the message names the file (and line)."""


# A flow or the queues file is kilobytes: a file this large is a mistake (a log pasted in), and
# parsing it would take seconds at every start.
MAX_YAML_BYTES = 1024 * 1024


def read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise YamlFileError(f"{path}: {size:,} bytes, over the {MAX_YAML_BYTES:,} a config "
                                "file may have")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlFileError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        # PyYAML calls text it was given "<unicode string>": the file's name says more.
        message = str(exc).replace('"<unicode string>"', f'"{path.name}"')
        raise YamlFileError(f"{path}: invalid YAML: {message}") from None
