"""/healthz (the process answers) and /readyz (it can do its job)."""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from reactorapp.web.errors import ApiError, JSONResource

log = Logger()


class Readiness:
    """Named checks that must all pass before the hub says it is ready.

    The service adds "listeners"; whatever else must be up first (the
    store, a cluster link) adds its own check with `add_check`.
    """

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        """The names of the checks that do not pass now."""
        failing = []
        for name, check in self._checks.items():
            try:
                ok = check()
            except Exception:
                log.failure("Readiness check {name!r} failed", name=name)
                ok = False
            if not ok:
                failing.append(name)
        return failing


class Health(JSONResource):
    """200 as long as the reactor turns: for liveness probes."""

    def json_GET(self, request):
        return {"status": "ok"}


class Ready(JSONResource):
    """200 once every readiness check passes, 503 naming those that do not."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def json_GET(self, request):
        failing = self.readiness.failing()
        if failing:
            raise ApiError(503, "not ready", f"Waiting for: {', '.join(failing)}.")
        return {"status": "ready"}
