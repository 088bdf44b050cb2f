"""APE heads, curation, zero-shot classification and an end-to-end alignment of frozen features."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipes.ape import (
    APEHeads,
    ResidualMLPHead,
    class_embeddings,
    count_parameters,
    curate_by_relevance,
    extract_features,
    synthetic_shapes,
    zero_shot_accuracy,
)
from recipes.contrastive import info_nce_loss

torch.set_num_threads(1)


def test_residual_head_starts_as_its_projection():
    head = ResidualMLPHead(10, 6, depth=3)
    x = torch.randn(5, 10)
    assert torch.allclose(head(x), head.proj(x))  # zero-initialized residual branches
    with pytest.raises(ValueError, match="depth"):
        ResidualMLPHead(10, 6, depth=-1)


def test_zero_shot_hand_case_and_class_embeddings():
    cls = torch.eye(3)
    img = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.7, 0.0], [1.0, 0.0, 0.0]])
    assert zero_shot_accuracy(img, cls, torch.tensor([0, 2, 1, 1])) == pytest.approx(0.75)
    heads = APEHeads(4, 3, embed_dim=3, depth=0)
    with torch.no_grad():
        heads.text_head.proj.weight.copy_(torch.eye(3))
        heads.text_head.proj.bias.zero_()
    prompts = torch.tensor([[1.0, 0, 0], [1.0, 0.2, 0], [0, 1.0, 0], [0, 1.0, 0.2]])  # 2 classes x 2 templates
    ce = class_embeddings(heads, prompts, templates_per_class=2)
    expected = F.normalize(torch.stack([F.normalize(prompts[:2], dim=1).mean(0), F.normalize(prompts[2:], dim=1).mean(0)]), dim=1)
    assert torch.allclose(ce, expected, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        class_embeddings(heads, prompts[:3], templates_per_class=2)


def test_curation_selects_relevant_and_balances():
    prompts = torch.eye(4)[:2]  # two classes, one prompt each: directions e0, e1
    cands = torch.cat([torch.eye(4)[0:1].repeat(5, 1), torch.eye(4)[1:2].repeat(2, 1), torch.eye(4)[2:3].repeat(5, 1)])
    cands = cands + 0.01 * torch.randn_like(cands)
    top = curate_by_relevance(cands, prompts, 4)
    assert set(top.tolist()) <= set(range(7))  # never the off-task rows 7..11
    bal = curate_by_relevance(cands, prompts, 4, prompts_per_class=1)
    assert sorted(i < 5 for i in bal.tolist()) == [False, False, True, True]  # 2 per class
    with pytest.raises(ValueError, match="budget"):
        curate_by_relevance(cands, prompts, 0)


def test_parameter_counts_and_frozen_extraction():
    enc = torch.nn.Linear(8, 4).requires_grad_(False)
    heads = APEHeads(4, 6, embed_dim=5, depth=1)
    assert count_parameters(enc, trainable=True) == 0 and count_parameters(enc, trainable=False) == 36
    assert count_parameters(heads) == count_parameters(heads, trainable=True)
    enc.train()
    f = extract_features(enc, torch.randn(10, 8), batch_size=3)
    assert f.shape == (10, 4) and not f.requires_grad and enc.training


def test_synthetic_shapes():
    x, caps = synthetic_shapes(50, seed=1)
    assert x.shape == (50, 1, 8, 8) and len(caps) == 50
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and bool((x.flatten(1).sum(1) > 0).all())


def test_alignment_of_frozen_features_gives_zero_shot():
    """Frozen 'image' and 'text' features are unrelated random linear views of a class code; the
    heads must learn to align them from pairs so that class prompts classify held-out images."""
    g = torch.Generator().manual_seed(0)
    n_cls, d = 6, 12
    codes = torch.randn(n_cls, d, generator=g)
    w_img, w_txt = torch.randn(d, 20, generator=g), torch.randn(d, 30, generator=g)

    def sample(n):
        y = torch.randint(0, n_cls, (n,), generator=g)
        z = codes[y] + 0.3 * torch.randn(n, d, generator=g)
        return z @ w_img, (codes[y] + 0.3 * torch.randn(n, d, generator=g)) @ w_txt, y

    xi, xt, _ = sample(600)
    heads = APEHeads(20, 30, embed_dim=16)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    start_scale = heads.logit_scale().item()
    for step in range(250):
        b = torch.randint(0, 600, (64,), generator=g)
        zi, zt, scale = heads(xi[b], xt[b])
        loss = info_nce_loss(zi, zt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_img, _, test_y = sample(300)
    with torch.no_grad():
        acc = zero_shot_accuracy(heads.encode_image(test_img), class_embeddings(heads, codes @ w_txt), test_y)
    assert acc > 0.9
    assert heads.logit_scale().item() != start_scale  # the temperature is learned
