import numpy as np
import torch

from arlm.data.batches import IGNORE_INDEX, BatchSampler, document_mask


def _sampler(tokens, starts=None, **kw):
    starts = np.array([0, len(tokens)]) if starts is None else np.asarray(starts)
    return BatchSampler(np.asarray(tokens), starts, block_size=kw.pop("block_size", 8), seed=3, **kw)


def test_packed_targets_are_inputs_shifted_by_one():
    tokens = np.arange(100)
    batch = _sampler(tokens).batch(step=5, global_rows=4)
    assert batch.x.shape == (4, 8)
    assert torch.equal(batch.y[:, :-1], batch.x[:, 1:])
    assert torch.equal(batch.y[:, -1], batch.x[:, -1] + 1)
    assert batch.attention_mask is None


def test_batches_depend_only_on_step_and_parts_tile_the_global_batch():
    s = _sampler(np.arange(1000))
    whole = s.batch(7, 8)
    again = _sampler(np.arange(1000)).batch(7, 8)
    assert torch.equal(whole.x, again.x)
    parts = [s.batch(7, 8, part=p, parts=4) for p in range(4)]
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert not torch.equal(s.batch(8, 8).x, whole.x)


def test_epoch_sampling_visits_every_block_once_per_epoch():
    s = _sampler(np.arange(8 * 12 + 1), sampling="epoch")  # 12 disjoint blocks
    firsts = torch.cat([s.batch(step, 4).x[:, 0] for step in range(3)])
    assert sorted(firsts.tolist()) == list(range(0, 96, 8))


def test_padded_rows_mask_and_ignored_targets():
    # two documents of 3 and 6 tokens, each followed by EOS=0
    tokens = np.array([5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 0])
    s = _sampler(tokens, starts=[0, 4, 11], mode="padded", sampling="epoch", bos_id=0, pad_id=9)
    batch = s.batch(0, 2)
    lengths = batch.attention_mask.sum(1).tolist()
    assert sorted(lengths) == [4, 7]
    short = lengths.index(4)
    assert batch.x[short].tolist()[:4] == [0, 5, 6, 7]
    assert batch.y[short].tolist()[:4] == [5, 6, 7, 0]
    assert batch.x.shape[1] == 7  # padded to the longest row
    assert (batch.y[short, 4:] == IGNORE_INDEX).all() and (batch.x[short, 4:] == 9).all()
    block = _sampler(tokens, starts=[0, 4, 11], mode="padded", pad_to="block", bos_id=0).batch(0, 2)
    assert block.x.shape == (2, 8)


def test_padding_truncates_long_documents():
    tokens = np.arange(1, 40)
    s = _sampler(tokens, starts=[0, 39], mode="padded", bos_id=0, block_size=8)
    batch = s.batch(0, 1)
    assert batch.x.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert batch.y.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert s.cut() == (1, 39 - 8)  # tokens 9..39 are never in a row
    assert _sampler(tokens, starts=[0, 30, 39], mode="padded", block_size=8).cut() == (1, 30 - 9)  # no BOS: 9 a row
    assert _sampler(tokens, starts=[0, 39]).cut() == (0, 0)  # packed: every token in some block


def test_document_mask_never_crosses_an_eos():
    x = torch.tensor([[4, 5, 0, 6, 7, 0, 8]])
    mask = document_mask(x, eos_id=0)[0]
    assert mask[1, 0] and not mask[2, 0] and not mask[2, 1]  # the EOS opens the next document: it sees none before
    assert mask[3, 2] and not mask[3, 1] and mask[4, 2]
    assert mask[6, 5] and not mask[6, 4] and not mask[5, 4]


def test_eval_batches_cover_the_split_without_overlap():
    s = _sampler(np.arange(8 * 10 + 1))
    ys = torch.cat([b.y.flatten() for b in s.eval_batches(batch_size=3)])
    assert ys.tolist() == list(range(1, 81))


def test_eval_batches_across_processes_cover_the_split_once_with_as_many_forwards_each():
    """4 batches over 1..6 processes: every rank runs the same number of forwards (they are collective under
    FSDP / DDP), the real targets of all ranks together are the single-process ones, each once."""
    s = _sampler(np.arange(8 * 10 + 1))  # 10 blocks of 8: batches of 3 -> 4 batches
    for world in range(1, 7):
        shares = [list(s.eval_batches(batch_size=3, rank=r, world=world)) for r in range(world)]
        assert len({len(share) for share in shares}) == 1, world
        assert s.eval_batch_count(3, rank=world - 1, world=world) == len(shares[0])
        targets = torch.cat([b.y.flatten() for share in shares for b in share])
        assert sorted(targets[targets != IGNORE_INDEX].tolist()) == list(range(1, 81)), world
