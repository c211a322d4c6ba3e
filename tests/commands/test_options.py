import pytest

from arlm.commands.options import check_batches, refuse_unused
from arlm.errors import ArlmError


def test_check_batches_refuses_negatives_and_keeps_zero_for_the_whole_split():
    check_batches(0)
    check_batches(3)
    with pytest.raises(ArlmError, match="--batches -1"):
        check_batches(-1)


def test_refuse_unused_names_every_flag_set():
    refuse_unused({"--a": False}, "with --file")
    with pytest.raises(ArlmError, match="^--a, --c go with --file$"):
        refuse_unused({"--a": True, "--b": False, "--c": True}, "with --file")
