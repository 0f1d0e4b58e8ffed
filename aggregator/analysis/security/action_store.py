"""Where the action hook keeps its actions: :class:`ActionStore`, and the single process's default.

:class:`MemoryActionStore` keeps the newest ``max_actions`` in memory and in
``data_dir/security_actions.json`` (written at every change). A cluster keeps them in PostgreSQL
instead (:class:`aggregator.alerting.security_actions.PgActionStore`), so every replica lists and
decides every replica's actions. Both answer a decision the same way: ``KeyError`` for an unknown
action, ``ValueError`` (:func:`not_pending`) for one already decided — the conditional step that
makes a decision, and the webhook call after it, happen once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aggregator.analysis.state import write_json

if TYPE_CHECKING:
    from aggregator.analysis.security.actions import Action

__all__ = ["FILE_NAME", "ActionStore", "MemoryActionStore", "not_pending"]

log = logging.getLogger(__name__)

FILE_NAME = "security_actions.json"


def not_pending(a: Action) -> ValueError:
    """The answer to deciding ``a`` again: which action, what it is now, who decided it (a 409)."""
    by = f" by {a.decided_by}" if a.decided_by else ""
    return ValueError(f"action {a.action_id} was already decided{by}: it is {a.status}, not pending")


class ActionStore(Protocol):
    """The actions of one process, or of a whole cluster (``shared``)."""

    shared: bool

    def add(self, a: Action) -> bool:
        """Keep ``a``; ``False`` (not kept) when its subject has a pending action already."""
        ...

    def list(self, status: str | None) -> list[Action]:
        """Newest first; every status when ``status`` is ``None``."""
        ...

    def get(self, action_id: str) -> Action | None: ...

    def decide(self, action_id: str, status: str, who: str, at_ns: int) -> Action:
        """Move a pending action to ``status`` (approved, rejected) once: ``KeyError``, ``ValueError``."""
        ...

    def finish(self, a: Action) -> None:
        """Record how an approved action's delivery went (``a.status`` sent or failed, ``a.error``)."""
        ...

    def restore(self) -> None: ...


class MemoryActionStore:
    """The newest ``max_actions`` actions in memory and in ``path`` (``None``: memory only); thread-safe."""

    shared = False

    def __init__(self, max_actions: int, path: Path | None) -> None:
        self.max_actions = max_actions
        self.path = path
        self._actions: OrderedDict[str, Action] = OrderedDict()
        self._subjects: dict[tuple[str, str], str] = {}  # the newest action per subject
        self._lock = threading.Lock()

    def add(self, a: Action) -> bool:
        with self._lock:
            key = (a.subject_type, a.subject)
            open_id = self._subjects.get(key)
            if open_id is not None and self._actions.get(open_id, a).status == "pending":
                return False  # one pending action per subject
            self._actions[a.action_id] = a
            self._subjects[key] = a.action_id
            while len(self._actions) > self.max_actions:
                self._actions.popitem(last=False)
        self._save()
        return True

    def list(self, status: str | None) -> list[Action]:
        with self._lock:
            return [a for a in reversed(self._actions.values()) if status is None or a.status == status]

    def get(self, action_id: str) -> Action | None:
        with self._lock:
            return self._actions.get(action_id)

    def decide(self, action_id: str, status: str, who: str, at_ns: int) -> Action:
        with self._lock:
            a = self._actions[action_id]
            if a.status != "pending":
                raise not_pending(a)
            a.status, a.decided_by, a.decided_unix_nano = status, who, at_ns
        self._save()
        return a

    def finish(self, a: Action) -> None:
        self._save()  # ``a`` is the kept object itself

    def restore(self) -> None:
        from aggregator.analysis.security.actions import Action  # actions imports this module

        if self.path is None or not self.path.exists():
            return
        try:
            for d in json.loads(self.path.read_text())["actions"]:
                a = Action(**d)
                self._actions[a.action_id] = a
                self._subjects[(a.subject_type, a.subject)] = a.action_id
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("security actions in %s could not be restored (%s); starting afresh", self.path, e)
            self._actions.clear()
            self._subjects.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            doc = {"version": 1, "actions": [a.to_dict() for a in self._actions.values()]}
        write_json(self.path, doc)
