from arlm.evaluation.instruct import contains_answer, instruction_split


def test_contains_answer_is_a_whole_word_match_ignoring_case():
    assert contains_answer("The capital city of Norway is Oslo.", "Oslo")
    assert contains_answer("oslo", "Oslo") and contains_answer("12 + 30 = 42", "42")
    assert contains_answer("Je suis fatigué.", "fatigué")
    assert not contains_answer("The answer is 142.", "42")  # a part of a number is not the number
    assert not contains_answer("Oslofjord", "Oslo")
    assert not contains_answer("cars?", "car") and contains_answer("(a.b)", "a.b")  # the answer is not a pattern
    assert not contains_answer("", "x")


def test_held_out_items_are_never_training_answers():
    train, held = instruction_split(["plurals"])
    assert held and train
    asked = {item.messages[-1]["content"] for item in held}
    taught = {m[-2]["content"] for m in train}
    assert not asked & taught
