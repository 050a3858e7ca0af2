"""Before a long run that ends with a push: can this token write to this Hub repo? Asked once, at the start.

Generation or training that runs for hours and then fails to push is work thrown away; this check makes the
usual causes (offline, no token, a rejected token, a read-only token, a fine-grained token without write access
there, a repo of another user or organisation, a malformed repo id) fail at once. It takes the caller's
``huggingface_hub.HfApi`` (so segcontract does not depend on the Hub client, and tests can pass a fake) and only
reads (``whoami``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from segcontract.errors import HubAccessError

__all__ = ["HUB_REPO_ID", "check_hub_write", "hub_errors"]

#: ``owner/name`` as the Hub accepts it.
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
#: ``whoami()["auth"]["accessToken"]["role"]`` of a fine-grained token, and the permission a push needs
FINE_GRAINED = "fineGrained"
WRITE_PERMISSION = "repo.write"


def _whoami(api: Any, field: str) -> dict[str, Any]:
    try:
        info = api.whoami()
    except Exception as error:  # the Hub client raises HTTP, connection and token errors of several kinds
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubAccessError(
                f"{field}: the Hub rejected the token (HTTP {status}); log in again (`hf auth login`) or set "
                "HF_TOKEN to a valid token with write access."
            ) from None
        if "token" in str(error).lower() and status is None and "connect" not in str(error).lower():
            raise HubAccessError(
                f"{field}: no Hub token found; log in (`hf auth login`) or set HF_TOKEN to a token with write "
                "access, or leave out the push."
            ) from None
        raise HubAccessError(
            f"{field}: the Hub cannot be reached ({type(error).__name__}); check the network, or leave out the "
            "push and upload the output folder later."
        ) from None
    return info if isinstance(info, dict) else {}


def check_hub_write(
    api: Any, repo_id: Any, *, offline: bool, field: str = "push_to_hub", repo_type: str = "model"
) -> None:
    """Raise :class:`HubAccessError` naming ``field`` unless ``api``'s token can write to ``repo_id`` (a
    ``repo_type`` repo: ``"model"`` or ``"dataset"``).

    ``offline`` (``HF_HUB_OFFLINE``) fails at once. A fine-grained token must hold ``repo.write`` on the repo's
    owner or on the repo itself."""
    if not isinstance(repo_id, str) or not HUB_REPO_ID.match(repo_id):
        raise HubAccessError(f"{field}={repo_id!r}: a Hub repo id looks like 'user/name' or 'org/name'.")
    if offline:
        raise HubAccessError(
            f"{field}={repo_id!r}: the Hub is switched off (HF_HUB_OFFLINE is set); unset it to push, or leave "
            "out the push and upload the output folder later."
        )
    info = _whoami(api, field)
    owner = repo_id.split("/", 1)[0]
    names = {info.get("name")} | {org.get("name") for org in info.get("orgs") or [] if isinstance(org, dict)}
    if info.get("name") is not None and owner not in names:
        raise HubAccessError(
            f"{field}={repo_id!r}: the token belongs to {info.get('name')!r}, who is not {owner!r} nor a member "
            f"of it; push to '{info.get('name')}/{repo_id.split('/', 1)[1]}' or log in as a member of {owner!r}."
        )
    access = (info.get("auth") or {}).get("accessToken") or {}
    if access.get("role") == "read":
        raise HubAccessError(
            f"{field}={repo_id!r}: the token is read-only; create a token with write access "
            "(https://huggingface.co/settings/tokens) and log in with it."
        )
    grants = access.get(FINE_GRAINED)
    if access.get("role") == FINE_GRAINED and not _fine_grained_can_write(grants, repo_id, repo_type):
        raise HubAccessError(
            f"{field}={repo_id!r}: the fine-grained token lacks the {WRITE_PERMISSION!r} permission on "
            f"{owner!r} (and on the {repo_type} {repo_id!r}); edit the token at "
            "https://huggingface.co/settings/tokens to give it write access to the repos of "
            f"{owner!r}, or use a token that has it."
        )


def _fine_grained_can_write(grants: Any, repo_id: str, repo_type: str = "model") -> bool:
    """Whether a fine-grained token's ``grants`` (``whoami()["auth"]["accessToken"]["fineGrained"]``) include
    ``repo.write`` on ``repo_id``: granted globally, on its owner (a user or an organisation), or on the repo.

    The Hub lists them as ``{"global": [permission, ...], "scoped": [{"entity": {"type": "user" | "org" | "model" |
    "dataset" | "space", "name": ...}, "permissions": [...]}, ...]}``.
    """
    if not isinstance(grants, dict):
        return False
    if WRITE_PERMISSION in (grants.get("global") or []):
        return True
    owner = repo_id.split("/", 1)[0]
    targets = {("user", owner), ("org", owner), (repo_type, repo_id)}
    for scope in grants.get("scoped") or []:
        if not isinstance(scope, dict):
            continue
        entity = scope.get("entity") or {}
        permissions = scope.get("permissions") or []
        if (entity.get("type"), entity.get("name")) in targets and WRITE_PERMISSION in permissions:
            return True
    return False


#: Packages whose exceptions mean "the Hub or the network failed" (the Hub client raises several kinds).
_NETWORK_PACKAGES = frozenset({"httpx", "httpcore", "requests", "urllib3", "huggingface_hub"})


def _is_network_failure(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    return any(cls.__module__.split(".")[0] in _NETWORK_PACKAGES for cls in type(error).__mro__)


@contextlib.contextmanager
def hub_errors(repo_id: str, field: str = "push_to_hub") -> Iterator[None]:
    """Re-raise a network or Hub failure inside the block (raw ``httpx.ConnectError``, HTTP errors) as
    :class:`HubAccessError` naming ``field`` and the repo; other errors pass unchanged."""
    try:
        yield
    except HubAccessError:
        raise
    except Exception as error:
        if not _is_network_failure(error):
            raise
        status = getattr(getattr(error, "response", None), "status_code", None)
        reason = f"HTTP {status}" if status is not None else type(error).__name__
        raise HubAccessError(
            f"{field}={repo_id!r}: the upload failed ({reason}: {' '.join(str(error).split())[:200]}); check the "
            "network and that the token can write to the repo, then push again."
        ) from error
