"""Metric, loss-head and trainer-helper unit tests on small hand-checked arrays."""
import math

import mxnet as mx
import numpy as np
import pytest

from agegender import config
from agegender.losses import get_loss_symbol
from agegender.metrics import (AgeGenderMetric, age_gender_summary, cumulative_scores, fairness_report, label_ages,
                                losses)
from agegender.training import LRSchedule, default_lr_steps, get_devices, parse_lr_steps


def make_label(gender, age):
    """The 101-float training label, written out by hand: [gender, 1 x age, 0 x (100 - age)]."""
    return np.array([gender] + [1.0] * age + [0.0] * (100 - age), np.float32)


def make_fc1(male, age):
    """fc1 that decodes to ``age`` and the given gender: pair k votes "older" (logit 1 > 0) for k < age."""
    fc1 = np.zeros(202, np.float32)
    fc1[0:2] = (0.0, 1.0) if male else (1.0, 0.0)
    for k in range(100):
        fc1[2 + 2 * k: 4 + 2 * k] = (0.0, 1.0) if k < age else (1.0, 0.0)
    return fc1


def test_summary_by_hand():
    # errors 2, 0, 6, 5 -> MAE 13/4; |err| <= 5 for three of four (5 counts: CS@5 is "<= 5")
    result = age_gender_summary([10, 20, 30, 45], [12, 20, 36, 40], [10.5, 21.0, 30.0, 45.0],
                                [0, 1, 9999, 1], [0, 0, 1, 1])
    assert result["n"] == 4
    assert result["mae"] == pytest.approx(3.25)
    assert result["cs5"] == pytest.approx(0.75)
    assert result["mae_expected"] == pytest.approx(1.5 / 4)
    assert result["cs5_expected"] == pytest.approx(1.0)
    # unknown gender (9999) is left out: 2 right of 3 known
    assert result["gender_acc"] == pytest.approx(2 / 3)
    assert result["n_gender"] == 3
    assert result["gender_acc_by_gender"] == {"female": pytest.approx(1.0), "male": pytest.approx(0.5)}
    assert result["mae_by_decade"] == {"10-19": 2.0, "20-29": 0.0, "30-39": 6.0, "40-49": 5.0}
    assert result["mae_by_decade_expected"]["10-19"] == pytest.approx(0.5)


def test_summary_decade_over_100_and_empty():
    result = age_gender_summary([105], [100], [100.0], [1], [1])
    assert result["mae_by_decade"] == {"100+": 5.0}
    empty = age_gender_summary([], [], [], [], [])
    assert empty["n"] == 0 and empty["mae"] is None and empty["gender_acc"] is None


def test_fairness_report_by_hand():
    # ages 5, 8, 25, 40, 70; races white, black, white, unknown, code 7 (beyond UTKFace's names)
    report = fairness_report([5, 8, 25, 40, 70], [9, 8, 20, 40, 60], [5.0, 8.0, 25.0, 40.0, 70.0],
                             [1, 0, 0, 9999, 1], [0, 0, 0, 1, 1], [0, 1, 0, None, 7])
    assert list(report["by_race"]) == ["white", "black", "race 7", "unknown"]
    white = report["by_race"]["white"]
    assert white["n"] == 2 and white["mae"] == pytest.approx(4.5) and white["cs5"] == 1.0   # errors 4 and 5
    # white: the 5-year-old boy is wrong (child), the 25-year-old woman right (adult)
    assert (white["gender_acc"], white["gender_acc_under10"], white["gender_acc_age10plus"]) == (0.5, 0.0, 1.0)
    assert (white["n_gender_under10"], white["n_gender_age10plus"]) == (1, 1)
    unknown = report["by_race"]["unknown"]
    assert unknown["n"] == 1 and unknown["n_gender"] == 0 and unknown["gender_acc"] is None
    assert report["all"]["n_gender"] == 4 and report["all"]["gender_acc"] == pytest.approx(0.75)
    assert report["all"]["gender_acc_under10"] == pytest.approx(0.5)
    assert report["all"]["gender_acc_age10plus"] == pytest.approx(1.0)
    assert {name: g["n"] for name, g in report["by_gender"].items()} == {"female": 2, "male": 2}
    assert list(report["by_decade"]) == ["0-9", "20-29", "40-49", "70-79"]
    assert report["by_decade"]["0-9"]["mae"] == pytest.approx(2.0)
    assert report["by_decade"]["70-79"]["mae_expected"] == 0.0
    assert "by_race" not in fairness_report([30], [30], [30.0], [1], [1], [None])
    assert "by_race" not in fairness_report([30], [30], [30.0], [1], [1])


def test_cumulative_scores():
    curve = cumulative_scores([10, 10, 10, 10], [10, 11, 13, 20], max_error=5)
    assert curve.tolist() == [0.25, 0.5, 0.5, 0.75, 0.75, 0.75]


def test_label_ages_and_losses_at_zero_logits():
    labels = np.stack([make_label(1, 1), make_label(0, 37), make_label(9999, 100)])
    assert label_ages(labels).tolist() == [1, 37, 100]
    gender_ce, age_ce = losses(np.zeros((3, 202), np.float32), labels)
    # every 2-way softmax of equal logits costs ln 2; the unknown gender has no gender loss
    assert gender_ce[:2] == pytest.approx([math.log(2)] * 2)
    assert np.isnan(gender_ce[2])
    assert age_ce == pytest.approx([100 * math.log(2)] * 3)


def test_metric_is_per_sample_and_drops_padding():
    metric = AgeGenderMetric()
    # batch 1: errors 0, 10, 0 ; batch 2: error 20, then one padded row that must not count
    metric.update(np.stack([make_label(0, 20), make_label(1, 30), make_label(1, 50)]),
                  np.stack([make_fc1(False, 20), make_fc1(True, 40), make_fc1(False, 50)]))
    metric.update(np.stack([make_label(9999, 60), make_label(0, 5)]),
                  np.stack([make_fc1(True, 40), make_fc1(True, 90)]), pad=1)
    result = metric.get()
    assert result["n"] == 4
    assert result["mae"] == pytest.approx(30 / 4)          # not the mean of batch means (10/3 + 20) / 2
    assert result["cs5"] == pytest.approx(0.5)
    assert result["gender_acc"] == pytest.approx(2 / 3)    # 9999 left out; third sample is wrong
    metric.reset()
    assert metric.get() == {"n": 0}


def test_loss_gradients_match_hand_formula():
    """d loss / d fc1 = (softmax - target) / N per age pair, and gender_weight * (p - y) / #known for gender."""
    rng = np.random.RandomState(0)
    n, gender_weight, smoothing = 5, 3.0, 0.1
    fc1 = rng.randn(n, 202).astype(np.float32)
    genders, ages = [0, 1, 9999, 1, 0], [1, 5, 50, 100, 30]
    labels = np.stack([make_label(g, a) for g, a in zip(genders, ages)])
    sym = get_loss_symbol(mx.sym.var("fc1"), gender_weight=gender_weight, age_smoothing=smoothing)
    exe = sym.simple_bind(mx.cpu(), fc1=(n, 202), softmax_label=(n, 101),
                          grad_req={"fc1": "write", "softmax_label": "null"})
    exe.arg_dict["fc1"][:] = fc1
    exe.arg_dict["softmax_label"][:] = labels
    exe.forward(is_train=True)
    exe.backward()
    grad = exe.grad_dict["fc1"].asnumpy()

    pairs = np.exp(fc1[:, 2:].reshape(n, 100, 2))
    pairs /= pairs.sum(axis=2, keepdims=True)
    older = labels[:, 1:] * (1 - 2 * smoothing) + smoothing
    target = np.stack([1 - older, older], axis=2)
    np.testing.assert_allclose(grad[:, 2:], ((pairs - target) / n).reshape(n, 200), atol=1e-6)

    prob = np.exp(fc1[:, :2]) / np.exp(fc1[:, :2]).sum(axis=1, keepdims=True)
    expected = np.zeros((n, 2))
    for i, g in enumerate(genders):
        if g != 9999:
            expected[i] = gender_weight * (prob[i] - np.eye(2)[g]) / 4
    np.testing.assert_allclose(grad[:, :2], expected, atol=1e-6)
    # the per-sample age loss output is the smoothed cross-entropy
    np.testing.assert_allclose(exe.outputs[1].asnumpy()[:, 0], -(target * np.log(pairs)).sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(exe.outputs[2].asnumpy(), fc1)


def test_lr_schedule_step_cosine_warmup():
    step = LRSchedule(0.1, 100, mode="step", lr_steps=[50, 75])
    assert [step(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = LRSchedule(0.1, 100, mode="cosine", warmup=10)
    assert cosine(0) == pytest.approx(0.01) and cosine(9) == pytest.approx(0.1)
    assert cosine(10) == pytest.approx(0.1)
    assert cosine(55) == pytest.approx(0.05)
    assert cosine(100) == pytest.approx(0.0) and cosine(500) == pytest.approx(0.0)
    assert LRSchedule.from_dict(cosine.to_dict())(55) == pytest.approx(0.05)
    assert default_lr_steps(1000) == [500, 750]
    assert parse_lr_steps("") == [] and parse_lr_steps("10, 20") == [10, 20]


def test_devices_without_gpu():
    assert get_devices(None, environ={}) == [mx.cpu()]
    assert get_devices(None, environ={"CUDA_VISIBLE_DEVICES": ""}) == [mx.cpu()]
    if mx.context.num_gpus() == 0:
        assert get_devices(None, environ={"CUDA_VISIBLE_DEVICES": "0"}) == [mx.cpu()]
        with pytest.raises(ValueError, match="GPU"):
            get_devices("0", environ={})
    assert get_devices("-1", environ={}) == [mx.cpu()]
    assert config.FC1_SIZE == 202
