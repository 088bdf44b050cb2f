"""The one-process simulation of n workers: learns, breaks under attack, survives with a rule."""
import pytest
import torch

from commcomp.robust import IPM, CoordinateMedian, LabelFlip, Mean, MixTailor, NonFinite, TrimmedMean
from commcomp.robust.simulation import SimulationConfig, simulate

from common.data import load_digits_tensors

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits_tensors(flat=True)
    return (train.x, train.y), (test.x, test.y)


def run(digits, aggregator, attack, **overrides):
    train, test = digits
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    cfg = SimulationConfig(**{"num_workers": 7, "num_byzantine": 2, "steps": 60, "batch_size": 16, "lr": 0.1, "eval_every": 30, **overrides})
    return simulate(model, train, test, aggregator, attack, cfg)


def test_honest_workers_learn(digits):
    result = run(digits, Mean(), None, num_byzantine=0)
    assert result.final_accuracy > 0.85
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.steps == [30, 60]


def test_large_ipm_breaks_the_mean_but_not_the_median(digits):
    broken = run(digits, Mean(), IPM(10.0))
    robust = run(digits, CoordinateMedian(), IPM(10.0))
    assert broken.final_accuracy < 0.5
    assert robust.final_accuracy > 0.8


def test_label_flip_attackers_train_on_flipped_labels(digits):
    # 3 of 7 workers flipping labels drag the mean; the trimmed mean resists (f=3 -> trims 3)
    result = run(digits, TrimmedMean(), LabelFlip(), num_byzantine=3)
    assert result.final_accuracy > 0.75


def test_nan_rows_are_dropped_and_counted(digits):
    result = run(digits, MixTailor([CoordinateMedian(), TrimmedMean()]), NonFinite())
    assert result.rejected_rows == 60 * 2 and result.skipped_steps == 0
    assert result.final_accuracy > 0.8


def test_bad_configuration_is_rejected(digits):
    with pytest.raises(ValueError, match="num_workers"):
        SimulationConfig(num_workers=0)
    with pytest.raises(ValueError, match="f"):
        SimulationConfig(num_workers=4, num_byzantine=4)
    with pytest.raises(ValueError, match="attack"):
        run(digits, Mean(), None)
    with pytest.raises(ValueError, match="2f [+] 1"):
        run(digits, CoordinateMedian(), IPM(0.1), num_workers=4)


def test_bad_data_is_rejected_naming_the_argument(digits):
    (x, y), test = digits
    for bad, match in [
        (x, "train must be an [(]x, y[)] pair"),
        ((x, y, y), "train must be an [(]x, y[)] pair"),
        ((x, y.float()), "train: y must be a 1-D int64"),
        ((x[:-1], y), "train: x and y must hold the same number"),
        ((x, y - 1), "train: class labels y must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            simulate(torch.nn.Linear(64, 10), bad, test, Mean(), None, SimulationConfig(num_byzantine=0, steps=1))
    with pytest.raises(ValueError, match="test: x and y"):
        simulate(torch.nn.Linear(64, 10), (x, y), (x, y[:1]), Mean(), None, SimulationConfig(num_byzantine=0, steps=1))
