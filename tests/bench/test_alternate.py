from arlm.bench.alternate import alternate


def test_runs_take_turns_the_order_reversed_every_repeat():
    calls = []
    runs = {name: (lambda name=name: calls.append(name) or float(len(calls))) for name in ("a", "b", "c")}
    figures = alternate(runs, 3)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert figures == {"a": [1.0, 6.0, 7.0], "b": [2.0, 5.0, 8.0], "c": [3.0, 4.0, 9.0]}
