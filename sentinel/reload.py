"""Reloading a running process's settings on SIGHUP: what changed, what applies live, what needs a restart.

On SIGHUP (:func:`sentinel.service.run_until_signalled`) a process re-reads its settings exactly as
it did at start (the same ``--config`` file, environment and flags) and compares them with the
ones it runs with. An invalid result is refused whole, naming the key, and the running settings
are kept. Of the changed keys, those the component lists as live are handed to its ``apply``
(which applies them atomically, e.g. between analysis batches); every other changed key is logged
as ``restart needed for <key>`` and keeps its running value. Only key names are logged, never
values: a changed key may be a token or a URL holding a password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from sentinel.config import ConfigError, get_key, leaves, replace_keys

__all__ = ["LOG_LEVEL_KEY", "SettingsReloader", "apply_log_level", "changed_keys"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every component's ``log_level`` applies live (the root logger's level).
LOG_LEVEL_KEY = "log_level"


def changed_keys(old: Any, new: Any) -> list[str]:
    """The settings whose values differ between ``old`` and ``new``, in declaration order; a section's
    settings by their dotted keys (``alerts.group_wait_s``), so each is live or not on its own."""
    return [leaf.key for leaf in leaves(type(old)) if get_key(old, leaf.key) != get_key(new, leaf.key)]


def apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


class SettingsReloader(Generic[T]):
    """Re-reads settings with ``load_again`` and applies the changed ``live_keys`` with ``apply``.

    ``apply(new, keys)`` gets the freshly validated settings and the live keys that changed; it
    must apply all of them or raise (then none count as applied). ``log_level`` is applied here
    for every component. Reloads never overlap: a SIGHUP during one waits for it.
    """

    def __init__(self, current: T, load_again: Callable[[], T], *, live_keys: Iterable[str] = (),
                 apply: Callable[[T, list[str]], Awaitable[object]] | None = None) -> None:
        self.current = current
        self._load_again = load_again
        self.live_keys = frozenset(live_keys) | {LOG_LEVEL_KEY}
        self._apply = apply
        self._lock = asyncio.Lock()

    async def reload(self) -> list[str]:
        """One reload; returns the keys applied (empty when nothing changed or it was refused)."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(self._load_again)
            except ConfigError as e:
                log.error("reload refused: invalid setting %s; the running settings are kept", e)
                return []
            changed = changed_keys(self.current, new)
            if not changed:
                log.info("reload: no setting changed")
                return []
            live = [k for k in changed if k in self.live_keys]
            for key in changed:
                if key not in self.live_keys:
                    log.warning("reload: restart needed for %s (changed; the running value is kept)", key)
            others = [k for k in live if k != LOG_LEVEL_KEY]
            if others and self._apply is not None:
                try:
                    await self._apply(new, others)
                except ConfigError as e:  # valid alone, but not applicable to what runs (e.g. auth on/off)
                    log.error("reload refused: %s; the running settings are kept", e)
                    return []
                except Exception:
                    log.exception("reload: applying %s failed; the running settings are kept", ", ".join(others))
                    return []
            if LOG_LEVEL_KEY in live:
                apply_log_level(getattr(new, LOG_LEVEL_KEY))
            # What runs now: the old settings with the applied keys replaced (restart-needed keys
            # keep their running value, so the next reload reports them again).
            self.current = replace_keys(self.current, {k: get_key(new, k) for k in live})
            if live:
                log.info("reload: applied %s", ", ".join(live))
            return live
