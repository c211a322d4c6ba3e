import pytest

from arlm.bench.prompt_sets import PROMPT_SETS, chat_ids, load_prompt_set
from arlm.errors import ArlmError


def test_the_built_in_sets_hold_grounded_requests_with_their_inputs_and_general_questions():
    grounded, chat = load_prompt_set("grounded"), load_prompt_set("chat")
    assert len(grounded) >= 20 and len(chat) >= 10
    assert len({item.id for item in grounded + chat}) == len(grounded) + len(chat)
    assert all(item.input and item.input in item.message() for item in grounded)  # each quotes its own input
    assert {"edit-code", "fix-typos", "extract-fields", "continue-list", "quote-answer"} <= {i.kind for i in grounded}
    assert all(not item.input and item.message() == item.instruction for item in chat)
    with pytest.raises(ArlmError, match="unknown prompt set"):
        load_prompt_set("poems")
    assert PROMPT_SETS == ("grounded", "chat")


@pytest.mark.real_model
def test_items_render_as_a_user_turn_of_smollm2s_template(smollm2):
    tok = smollm2.tokenizer
    item = load_prompt_set("grounded")[0]
    text = tok.decode(chat_ids(tok, item))
    assert item.input in text and text.rstrip().endswith("assistant")
