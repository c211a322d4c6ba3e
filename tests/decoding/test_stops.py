"""Stop strings: how much of a streamed text may still begin one."""

from arlm.decoding.stops import held_back


def test_held_back_is_the_longest_ending_that_starts_a_stop():
    assert held_back("the spa", ["space", "pa"]) == 3
    assert held_back("the sp", ["xyz"]) == 0
    assert held_back("aaa", ["aab"]) == 2
