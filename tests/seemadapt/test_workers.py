"""The process-wide worker pool: one pool, and a forked child that makes its own (the parent's threads are not there)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from seemadapt import workers


def _square_in_pool(value: int) -> int:
    return workers.worker_pool().submit(lambda: value * value).result(timeout=20)


def test_one_pool_for_the_process():
    assert workers.worker_pool() is workers.worker_pool()
    assert workers.worker_pool().submit(sum, [1, 2, 3]).result(timeout=20) == 6


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_pool():
    parent = workers.worker_pool()
    parent.submit(int).result(timeout=20)  # the parent's threads exist before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert (
            pool.apply_async(_square_in_pool, (7,)).get(timeout=60) == 49
        )  # would hang on the parent's pool
    assert workers.worker_pool() is parent
