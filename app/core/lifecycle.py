"""Hooks a web process runs when it begins a graceful shutdown (see core.uvicorn_worker): work
that would otherwise keep it alive, such as open event streams, ends itself."""

from collections.abc import Callable

_hooks: list[Callable[[], None]] = []


def on_shutdown(hook: Callable[[], None]) -> Callable[[], None]:
    _hooks.append(hook)
    return hook


def begin_shutdown() -> None:
    for hook in _hooks:
        hook()
