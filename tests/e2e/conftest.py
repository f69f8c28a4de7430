"""Fixtures for end-to-end tests against real MTAs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .postfix_instance import PostfixInstance, skip_unless_postfix_usable


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., PostfixInstance]]:
    """Create and start private Postfix instances (kwargs go to PostfixInstance); all are
    stopped and removed at teardown. Skips unless root with Postfix >= 3.4 installed."""
    skip_unless_postfix_usable()
    created: list[PostfixInstance] = []

    def make(**kwargs: object) -> PostfixInstance:
        inst = PostfixInstance.create(**kwargs)
        created.append(inst)
        inst.start()
        return inst

    try:
        yield make
    finally:
        for inst in created:
            inst.cleanup()


@pytest.fixture
def postfix_instance(postfix_factory: Callable[..., PostfixInstance]) -> PostfixInstance:
    """A running private Postfix instance with the default test configuration."""
    return postfix_factory()
