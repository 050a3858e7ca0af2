"""The Hub as ``HfApi.whoami()`` describes a token, for the push pre-checks (no network)."""

from __future__ import annotations

from typing import Any


def fine_grained(*scopes: tuple[str, str, str], global_permissions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A fine-grained token's grants, shaped as whoami lists them (``auth.accessToken.fineGrained``), from
    ``(entity type, entity name, permission)`` scopes: type ``user``, ``org``, ``model``, ``dataset`` or ``space``."""
    scoped = [{"entity": {"type": t, "name": n}, "permissions": [p]} for t, n, p in scopes]
    return {"canReadGatedRepos": True, "global": list(global_permissions), "scoped": scoped}


def whoami(user: str = "me", role: str = "write", grants: dict[str, Any] | None = None) -> dict[str, Any]:
    """What whoami returns for ``user`` (a member of the organisation ``lab``) with a token of ``role``."""
    token: dict[str, Any] = {"role": role}
    if grants is not None:
        token["fineGrained"] = grants
    return {"name": user, "orgs": [{"name": "lab"}], "auth": {"accessToken": token}}
