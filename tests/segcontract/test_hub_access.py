"""The Hub-write pre-check with whoami answers for fine-grained tokens (no network): the token must hold
``repo.write`` on the repo's owner or on the repo itself, of the type that is pushed."""

from __future__ import annotations

import pytest
from fake_hub import fine_grained, whoami  # loaded by tests/conftest.py

from segcontract import HubAccessError, check_hub_write


class Hub:
    """An ``HfApi`` stand-in that only answers whoami."""

    def __init__(self, answer: dict) -> None:
        self.answer = answer

    def whoami(self) -> dict:
        return self.answer


def _check(repo_type: str, repo_id: str, grants: dict | None) -> None:
    hub = Hub(whoami(role="fineGrained", grants=grants))
    check_hub_write(hub, repo_id, offline=False, repo_type=repo_type)


@pytest.mark.parametrize(
    ("repo_type", "repo_id", "grants"),
    [
        ("model", "me/adapters", fine_grained(("user", "me", "repo.write"))),
        ("dataset", "lab/data", fine_grained(("org", "lab", "repo.write"))),
        ("model", "me/adapters", fine_grained(("model", "me/adapters", "repo.write"))),
        (
            "dataset",
            "me/data",
            fine_grained(("user", "lab", "repo.write"), ("dataset", "me/data", "repo.write")),
        ),
        ("dataset", "me/data", fine_grained(global_permissions=("repo.write",))),
    ],
)
def test_a_fine_grained_token_that_can_write_there_passes(repo_type, repo_id, grants):
    _check(repo_type, repo_id, grants)  # no error: the work may start


@pytest.mark.parametrize(
    ("repo_type", "repo_id", "grants"),
    [
        ("model", "me/adapters", fine_grained(("user", "me", "repo.content.read"))),
        ("model", "me/adapters", fine_grained(("org", "lab", "repo.write"))),
        ("model", "me/adapters", fine_grained(("dataset", "me/adapters", "repo.write"))),
        ("dataset", "lab/data", fine_grained(("user", "me", "repo.write"))),
        ("dataset", "me/data", fine_grained(global_permissions=("discussion.write",))),
        ("dataset", "me/data", None),
    ],
)
def test_a_fine_grained_token_without_write_there_is_refused(repo_type, repo_id, grants):
    with pytest.raises(HubAccessError) as caught:
        _check(repo_type, repo_id, grants)
    message = str(caught.value)
    owner = repo_id.split("/")[0]
    assert f"push_to_hub={repo_id!r}" in message and "'repo.write'" in message and f"on {owner!r}" in message
    assert "https://huggingface.co/settings/tokens" in message  # the fix
