"""Who is calling the gateway: the value every route and the MLflow proxy receive once a token is checked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """A caller. ``user`` is the IdP's user name (the token's ``preferred_username`` claim, configurable);
    ``admin`` a role claim; ``submission`` is set only for a job's credential (the submission it belongs to),
    which the MLflow proxy accepts and the submission API does not."""

    user: str
    admin: bool = False
    submission: str | None = None

    @property
    def is_job(self) -> bool:
        return self.submission is not None
