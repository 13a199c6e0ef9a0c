"""A task's states and the transitions between them, as data.

The store guards every statement with the `sources` of the transition it performs
(`tasks.c.status.in_(TRANSITIONS["claim"].sources)`), migration 0002 turns the states' invariants
into CHECK constraints, and `describe()` prints the table for the docs, so the machine is written
down once. `python -m wanserve.tasks.states` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"  # never stored: what the API answers for a task it cannot show


STORED: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCEEDED,
                                  TaskStatus.FAILED, TaskStatus.CANCELED)
TERMINAL: frozenset[TaskStatus] = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})


@dataclass(frozen=True)
class Transition:
    event: str
    sources: tuple[TaskStatus, ...]
    target: TaskStatus
    when: str  # the guard besides the source state, in words


_T = TaskStatus
TRANSITIONS: dict[str, Transition] = {t.event: t for t in (
    Transition("claim", (_T.PENDING,), _T.RUNNING,
               "accounts in turn, each one's oldest task of a model the worker serves, within the "
               "account's running limits (docs/queue.md); the claiming worker takes a lease"),
    Transition("reclaim", (_T.RUNNING,), _T.RUNNING,
               "its lease ran out (the worker stopped responding) and attempts < max_attempts; "
               "the lost attempt goes into the failure history"),
    Transition("exhaust", (_T.RUNNING,), _T.FAILED,
               "its lease ran out and attempts >= max_attempts (decided inside the claim statement)"),
    Transition("heartbeat", (_T.RUNNING,), _T.RUNNING, "by the lease holder: extends the lease"),
    Transition("succeed", (_T.RUNNING,), _T.SUCCEEDED, "by the lease holder, with a result"),
    Transition("fail", (_T.RUNNING,), _T.FAILED, "by the lease holder, with a code and a message"),
    Transition("release", (_T.RUNNING,), _T.PENDING,
               "by the lease holder, as its process shuts down: lease, worker and progress cleared and the "
               "attempt not counted (attempts - 1); claimed again in its account's turn"),
    Transition("cancel", (_T.PENDING, _T.RUNNING), _T.CANCELED,
               "by the task's account; a running worker notices at its next heartbeat"),
)}


def describe() -> str:
    """The transition table as Markdown, for the docs."""
    lines = ["| event | from | to | when |", "|---|---|---|---|"]
    for t in TRANSITIONS.values():
        lines.append(f"| {t.event} | {' or '.join(t.sources)} | {t.target} | {t.when} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
