"""PerceiverLayer semantics: shapes, depth, masks, the fully-masked row, batch independence, determinism."""

import pytest
import torch

from perceiver_export import PerceiverLayer


def make(dim=32, heads=2, depth=2, dim_head=16, **kw):
    torch.manual_seed(0)
    return PerceiverLayer(dim, heads, depth, dim_head, **kw).eval()


def inputs(batch=3, q=5, k=7, v=4, dim=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, q, dim, generator=g), torch.randn(batch, k, dim, generator=g),
            torch.randn(batch, v, dim, generator=g))


def test_reference_usage_shape():
    model = PerceiverLayer(512, 8, 6, 64).eval()
    q = k = v = torch.randn(1, 32, 512)
    with torch.no_grad():
        assert model(q, k, v).shape == (1, 32, 512)


def test_constructor_signature_defaults():
    model = PerceiverLayer(64, 4, 3)
    attn = model.blocks[0].cross_attn
    assert attn.to_q.out_features == 4 * 64  # dim_head defaults to 64
    assert attn.dropout.p == 0.1
    assert model.blocks[0].ff[0].out_features == 64 * 4  # ff_mult 4
    assert model.blocks[0].ff[2].p == 0.1


@pytest.mark.parametrize("k_len,v_len", [(7, 4), (1, 9), (5, 5)])
def test_output_has_q_shape_when_k_and_v_lengths_differ(k_len, v_len):
    q, k, v = inputs(k=k_len, v=v_len)
    with torch.no_grad():
        assert make()(q, k, v).shape == q.shape


def test_depth_is_number_of_blocks_each_with_its_own_weights():
    model = make(depth=4)
    assert len(model.blocks) == 4
    w = [b.cross_attn.to_kv.weight for b in model.blocks]
    assert all(not torch.equal(w[0], other) for other in w[1:])
    assert len({id(b.ff[0].weight) for b in model.blocks}) == 4


def test_mask_changes_output_and_all_true_mask_equals_none():
    model = make()
    q, k, v = inputs()
    mask = torch.ones(3, 11, dtype=torch.bool)
    with torch.no_grad():
        none = model(q, k, v)
        torch.testing.assert_close(model(q, k, v, mask), none, rtol=0, atol=0)
        mask[:, :5] = False
        assert (model(q, k, v, mask) - none).abs().max() > 1e-3


def test_masked_positions_do_not_influence_output():
    model = make()
    q, k, v = inputs()
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[:, 2] = False  # k position 2
    k2 = k.clone()
    k2[:, 2] += 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(q, k, v, mask), model(q, k2, v, mask), rtol=0, atol=1e-6)


def _without_cross_attention(model, q):
    for block in model.blocks:
        x = block.self_norm(q)
        q = q + block.self_attn(x, x)
        q = q + block.ff(block.ff_norm(q))
    return q


def test_fully_masked_row_is_finite_and_cross_attention_contributes_zero():
    model = make()
    q, k, v = inputs()
    mask = torch.rand(3, 11, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[1] = False
    with torch.no_grad():
        out = model(q, k, v, mask)
        assert torch.isfinite(out).all()
        # Row 1 sees no context: exactly the model without its cross-attention residuals.
        torch.testing.assert_close(out[1], _without_cross_attention(model, q[1:2])[0], rtol=0, atol=1e-6)
        # ... so its k and v do not matter at all.
        _, k2, v2 = inputs(seed=9)
        out2 = model(q, k2, v2, mask)
        torch.testing.assert_close(out2[1], out[1], rtol=0, atol=0)
        assert (out2[0] - out[0]).abs().max() > 1e-3


def test_batch_rows_are_independent():
    model = make()
    q, k, v = inputs(batch=4)
    mask = torch.rand(4, 11, generator=torch.Generator().manual_seed(5)) > 0.4
    with torch.no_grad():
        full = model(q, k, v, mask)
        for i in range(4):
            one = model(q[i : i + 1], k[i : i + 1], v[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(one[0], full[i], rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = make(dropout=0.5, ff_dropout=0.5)
    q, k, v = inputs()
    with torch.no_grad():
        assert torch.equal(model(q, k, v), model(q, k, v))
        model.train()
        assert not torch.equal(model(q, k, v), model(q, k, v))


def test_half_precision_keeps_layernorm_and_softmax_statistics_in_float32():
    model = make().to(torch.float16)
    q, k, v = (t.half() for t in inputs())
    with torch.no_grad():
        out = model(q, k, v)
    assert out.dtype == torch.float16
    ref = make()(*inputs())
    assert (out.float() - ref).abs().max() < 2e-2
