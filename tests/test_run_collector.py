"""A run makes young cyclic collections rarer and puts the process's setting back afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from celltx_mfg.model.journey import YOUNG_COLLECTION_EVERY, _fewer_collections


@pytest.fixture
def threshold() -> Iterator[tuple[int, ...]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_raised_during_a_run_and_restored(threshold: tuple[int, ...]) -> None:
    with _fewer_collections():
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *threshold[1:])
    assert gc.get_threshold() == threshold


def test_restored_only_when_the_last_overlapping_run_ends(threshold: tuple[int, ...]) -> None:
    outer = _fewer_collections()
    outer.__enter__()
    with _fewer_collections():
        pass
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY  # the outer run is still going
    outer.__exit__(None, None, None)
    assert gc.get_threshold() == threshold


def test_restored_when_a_run_raises(threshold: tuple[int, ...]) -> None:
    with pytest.raises(RuntimeError), _fewer_collections():
        raise RuntimeError("model error")
    assert gc.get_threshold() == threshold


def test_a_collector_switched_off_stays_off(threshold: tuple[int, ...]) -> None:
    gc.set_threshold(0)
    with _fewer_collections():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold()[0] == 0
