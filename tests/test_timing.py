"""The wall-time breakdown: nested blocks count each second once, in the innermost block; blocks entered
from `gather`'s worker threads are counted in the block that issued the gather."""

import time

from llama_rlhf.orchestrator.timing import UNTIMED, Clock, breakdown


def test_nested_blocks_count_exclusive_time_and_sum_to_the_wall():
    clock = Clock({"train": 1.0})  # a resumed run starts from the earlier totals
    t0 = time.perf_counter()
    with clock("train"):
        time.sleep(0.05)
        with clock("sync"):
            time.sleep(0.1)
        with clock("sync"):
            time.sleep(0.1)
    time.sleep(0.05)  # untimed
    wall = time.perf_counter() - t0
    assert 0.19 < clock.totals["sync"] < 0.3
    assert 1.04 < clock.totals["train"] < 1.1  # 1.0 before + ~0.05 of its own; the syncs are not counted twice
    rows = breakdown(clock.totals, wall + 1.0)
    assert [k for k, _, _ in rows] == ["train", "sync", UNTIMED]
    assert abs(sum(v for _, v, _ in rows) - (wall + 1.0)) < 1e-9
    assert abs(sum(s for _, _, s in rows) - 1.0) < 1e-9
    assert 0.04 < rows[-1][1] < 0.1


def test_blocks_from_gather_threads_are_counted_in_the_issuing_block():
    from llama_rlhf.actors.remote import gather

    clock = Clock()

    def scored():
        with clock("score"):  # runs in a worker thread, overlapping the other call
            time.sleep(0.1)
        return 1

    with clock("ppo"):
        assert gather(scored, scored) == [1, 1]
    assert "score" not in clock.totals and 0.09 < clock.totals["ppo"] < 0.2
