"""GPO: the attention mask lets every token see context only, so targets are independent of each other."""

from __future__ import annotations

import torch

from personalign.prefbench.methods.gpo import GPOModel, GPOOptions, context_tokens, gpo_attention_mask, tokens


def test_mask_by_hand() -> None:
    blocked = gpo_attention_mask(2, 2)
    expected = torch.tensor([[False, False, True, True]] * 4)
    assert torch.equal(blocked, expected)


def test_context_tokens_carry_the_preference_channel() -> None:
    a, b = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    tok, mask = context_tokens(a, b, torch.tensor([[True, False]]))
    assert tok.shape == (1, 4, 7)
    assert torch.equal(tok[0, 2, 3:6], -b[0, 0]) and torch.equal(tok[0, 0, 3:6], a[0, 0])  # signed copy
    assert tok[0, :, -1].tolist() == [1.0, 1.0, -1.0, -1.0]
    assert mask.tolist() == [[True, False, True, False]]
    assert tokens(torch.zeros(5, 3), 0.0)[:, -1].abs().sum() == 0


def model() -> GPOModel:
    torch.manual_seed(0)
    return GPOModel(3, GPOOptions(d_model=16, heads=2, ff=16, layers=2, dropout=0.0)).eval()


def test_targets_do_not_see_each_other() -> None:
    m = model()
    ctx, mask = context_tokens(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.ones(1, 4, dtype=torch.bool))
    t1, t2, t3 = (tokens(torch.randn(1, 1, 3), 0.0) for _ in range(3))
    with torch.no_grad():
        out_a = m(ctx, mask, torch.cat([t1, t2], dim=1))
        out_b = m(ctx, mask, torch.cat([t1, t3], dim=1))
        alone = m(ctx, mask, t1)
    assert torch.allclose(out_a[0, 0], out_b[0, 0], atol=1e-5)
    assert torch.allclose(out_a[0, 0], alone[0, 0], atol=1e-5)


def test_padding_is_ignored_and_context_labels_matter() -> None:
    m = model()
    a, b = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    ctx, mask = context_tokens(a, b, torch.ones(1, 4, dtype=torch.bool))
    tar = tokens(torch.randn(1, 5, 3), 0.0)
    pa, pb = torch.cat([a, torch.randn(1, 2, 3)], 1), torch.cat([b, torch.randn(1, 2, 3)], 1)
    pctx, pmask = context_tokens(pa, pb, torch.tensor([[True] * 4 + [False] * 2]))
    swapped, smask = context_tokens(b, a, torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        base = m(ctx, mask, tar)
        padded = m(pctx, pmask, tar)
        flipped = m(swapped, smask, tar)
    assert torch.allclose(base, padded, atol=1e-5)
    assert not torch.allclose(base, flipped, atol=1e-4)
