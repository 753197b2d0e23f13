"""PCME++ and InfoNCE: the closed form against sampling, values worked out by hand, the
pseudo-positive relabelling, and gradients that reach every trainable parameter and no frozen one."""

import math

import numpy as np
import pytest
import torch

from model.nn.losses import (
    InfoNCELoss,
    LossConfig,
    PCMEPlusPlusLoss,
    closed_form_distance,
    pair_losses,
    total_loss,
    vib_kl,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_closed_form_distance_equals_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    lv1, lv2 = torch.randn(3, 8, generator=g) - 1, torch.randn(4, 8, generator=g) - 1
    k = 200_000
    z1 = mu1[:, None] + torch.randn(3, k, 8, generator=g) * (0.5 * lv1).exp()[:, None]
    z2 = mu2[:, None] + torch.randn(4, k, 8, generator=g) * (0.5 * lv2).exp()[:, None]
    sampled = ((z1[:, None] - z2[None]) ** 2).sum(-1).mean(-1)  # (3, 4): E|z1 - z2|^2
    exact = closed_form_distance(mu1, lv1, mu2, lv2)
    # 200k samples: the relative standard error of each mean is below 0.5%.
    np.testing.assert_allclose(sampled.numpy(), exact.numpy(), rtol=0.02)


def test_pcmepp_loss_by_hand_on_two_pairs():
    # D = 1: means +1 and -1; variances 0.1 and 0.2 on one side, 0.3 and 0.4 on the other.
    one = (torch.tensor([[1.0], [-1.0]]), torch.log(torch.tensor([[0.1], [0.2]])))
    two = (torch.tensor([[1.0], [1.0]]), torch.log(torch.tensor([[0.3], [0.4]])))
    d = [[0 + 0.1 + 0.3, 0 + 0.1 + 0.4], [4 + 0.2 + 0.3, 4 + 0.2 + 0.4]]
    logits = [[-5 * d[i][j] + 5 for j in range(2)] for i in range(2)]
    base = 2 * sum(bce(logits[i][j], float(i == j)) for i in range(2) for j in range(2)) / 4
    plain = PCMEPlusPlusLoss(LossConfig(pseudo_positive_alpha=0.0, vib_beta=0.0))
    assert plain(one, two).item() == pytest.approx(base, rel=1e-5)
    # logits = [[3, 2.5], [-17.5, -18]]. Pseudo-positives by rows: logit(0,1) = 2.5 < 3 keeps
    # row 0 as is, logit(1,0) = -17.5 >= -18 marks (1,0). By columns (rows of the transpose):
    # logit(1,0) = -17.5 < 3 keeps column 0, logit(0,1) = 2.5 >= -18 marks (0,1).
    rows = [[1, 0], [1, 1]]
    cols = [[1, 0], [1, 1]]  # transpose rows: [j][i]
    pp_rows = sum(bce(logits[i][j], rows[i][j]) for i in range(2) for j in range(2)) / 4
    pp_cols = sum(bce(logits[i][j], cols[j][i]) for i in range(2) for j in range(2)) / 4
    with_pp = PCMEPlusPlusLoss(LossConfig(pseudo_positive_alpha=0.1, vib_beta=0.0))
    assert with_pp(one, two).item() == pytest.approx(base + 0.1 * (pp_rows + pp_cols), rel=1e-5)
    # VIB: KL(N(mu, s) || N(0, 1)) = -0.5 mean(1 + log s - mu^2 - s) per side.
    kl_one = -0.5 * np.mean([1 + math.log(0.1) - 1 - 0.1, 1 + math.log(0.2) - 1 - 0.2])
    kl_two = -0.5 * np.mean([1 + math.log(0.3) - 1 - 0.3, 1 + math.log(0.4) - 1 - 0.4])
    full = PCMEPlusPlusLoss(LossConfig())
    want = base + 0.1 * (pp_rows + pp_cols) + 1e-4 * (kl_one + kl_two)
    assert full(one, two).item() == pytest.approx(want, rel=1e-5)
    assert full.calibration() == (5.0, 5.0)


def test_pseudo_positives_mark_every_logit_reaching_the_diagonal():
    logits = torch.tensor([[2.0, 3.0, 1.0], [0.0, 1.0, 1.0], [5.0, 4.0, 4.0]])
    targets = PCMEPlusPlusLoss.pseudo_positive_targets(logits)
    assert targets.tolist() == [[1, 1, 0], [0, 1, 1], [1, 1, 1]]
    # A duplicated sample in a batch is a positive of its twin in both directions.
    mu = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    mu[2] = mu[0]
    lv = torch.full((3, 4), -4.0)
    loss = PCMEPlusPlusLoss(LossConfig())
    pp = loss.pseudo_positive_targets(loss.logits((mu, lv), (mu, lv)))
    assert pp[0, 2] == 1 and pp[2, 0] == 1 and pp[0, 1] == 0


def test_vib_kl_and_infonce_by_hand():
    assert float(vib_kl(torch.tensor([[0.6, 0.8]]), torch.zeros(1, 2))) == pytest.approx(0.25)
    mu1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu2 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    loss = InfoNCELoss(LossConfig(init_temperature=2.0))
    logits = 2.0 * np.array([[0.6, 0.0], [0.8, 1.0]])

    def ce(row, target):
        return -row[target] + math.log(sum(math.exp(v) for v in row))

    want = 0.5 * (np.mean([ce(logits[i], i) for i in range(2)]) + np.mean([ce(logits.T[i], i) for i in range(2)]))
    assert loss((mu1, None), (mu2, None)).item() == pytest.approx(want, rel=1e-6)
    assert loss.calibration() == (1.0, 2.0)


def test_pairs_are_weighted_and_missing_sides_leave_their_pairs_out():
    g = torch.Generator().manual_seed(2)
    emb = {
        side: (torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1), torch.full((4, 8), -4.0))
        for side in ("sat", "audio", "text")
    }
    loss = PCMEPlusPlusLoss(LossConfig())
    weights = {"sat_audio": 0.5, "sat_text": 0.5, "audio_text": 0.5}
    parts = pair_losses(loss, emb, weights)
    assert set(parts) == {"sat_audio", "sat_text", "audio_text"}
    assert total_loss(parts, weights).item() == pytest.approx(0.5 * sum(v.item() for v in parts.values()))
    no_text = pair_losses(loss, {k: v for k, v in emb.items() if k != "text"}, weights)
    assert set(no_text) == {"sat_audio"}
    with pytest.raises(ValueError, match="two modalities"):
        total_loss(pair_losses(loss, {"sat": emb["sat"]}, weights), weights)


def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(frozen_text_model):
    from model.batches import Collate, Examples, to_tensors
    from model.nn.psm import preprocessing
    from model.readers.synthetic import SyntheticConfig, SyntheticSource
    from model.train import Optimisation, TrainConfig

    model = frozen_text_model
    prep = preprocessing(model)
    source = SyntheticSource(SyntheticConfig(samples={"train": 8, "val": 0, "test": 0}, classes=8), "train", 32)
    batch = to_tensors(Collate(prep)([Examples(source, prep)[i] for i in range(8)]), torch.device("cpu"))
    opt = Optimisation(model, TrainConfig(meta_dropout=0.0))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_before and all(n.startswith("text.") for n in frozen_before)
    opt.step(batch, 0)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert opt.loss_fn.scale.grad is not None and opt.loss_fn.shift.grad is not None
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert p.grad is None and torch.equal(p, frozen_before[name])
