"""Age/gender metrics (the original's MAE/CS@5/accuracy, with its bugs fixed: README, "Differences from the original").

* gender accuracy over samples whose gender is known (label 9999 is left out, not counted wrong);
* MAE as the mean absolute error over samples (not a mean of per-batch means);
* CS@5, the cumulative score: the fraction of samples with ``|error| <= 5`` years;
* the same age metrics for the expected-value decoding ``E[age] = sum_k P(age > k)``;
* padded samples at the end of an iterator are dropped before anything is counted;
* the fairness report: the same figures by race group, by gender and by age decade, with gender accuracy
  also given apart for children under ``config.CHILD_AGE`` and for everyone older.
"""
import numpy as np

from . import config
from .decode import decode_age, decode_age_expected, decode_gender

CS_THRESHOLD = 5


def label_ages(label):
    """True ages from (N, 101) training labels: the number of set "older than k" bits."""
    return (np.asarray(label)[:, 1:1 + config.AGE_CLASSES] > 0.5).sum(axis=1).astype(np.int64)


def label_genders(label):
    """Gender column of (N, 101) training labels as int64 (0, 1 or 9999)."""
    return np.asarray(label)[:, 0].round().astype(np.int64)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def losses(fc1, label):
    """Per-sample ``(gender_ce, age_ce)``: gender cross-entropy (NaN for unknown gender) and the summed
    cross-entropy of the 100 ordinal pairs, both unsmoothed and unweighted."""
    fc1 = np.asarray(fc1, dtype=np.float64)
    genders = label_genders(label)
    known = genders != config.UNKNOWN_GENDER
    gender_logp = _log_softmax(fc1[:, 0:2])
    gender_ce = np.full(len(fc1), np.nan)
    gender_ce[known] = -gender_logp[known, genders[known]]
    bits = (np.asarray(label)[:, 1:1 + config.AGE_CLASSES] > 0.5).astype(np.int64)
    age_logp = _log_softmax(fc1[:, 2:config.FC1_SIZE].reshape(len(fc1), config.AGE_CLASSES, 2))
    age_ce = -np.take_along_axis(age_logp, bits[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    return gender_ce, age_ce


def age_gender_summary(age_true, age_pred, age_expected, gender_true, gender_pred):
    """Metrics over per-sample arrays; gender_true 9999 = unknown (left out of gender accuracy).

    Returns n, mae, cs5, mae_expected, cs5_expected, gender_acc, n_gender, mae_by_decade,
    mae_by_decade_expected (keys "0-9" … "90-99", "100+"), gender_acc_by_gender ("female", "male").
    Undefined values (no samples) are None.
    """
    age_true = np.asarray(age_true, dtype=np.float64)
    err = np.abs(np.asarray(age_pred, dtype=np.float64) - age_true)
    err_expected = np.abs(np.asarray(age_expected, dtype=np.float64) - age_true)
    gender_true = np.asarray(gender_true, dtype=np.int64)
    gender_ok = np.asarray(gender_pred, dtype=np.int64) == gender_true
    known = gender_true != config.UNKNOWN_GENDER

    def mean(values):
        return float(values.mean()) if values.size else None

    decades = decade_names(age_true)
    by_decade, by_decade_expected = {}, {}
    for name in dict.fromkeys(decades[np.argsort(age_true, kind="stable")]):
        by_decade[name] = mean(err[decades == name])
        by_decade_expected[name] = mean(err_expected[decades == name])
    return {
        "n": int(age_true.size),
        "mae": mean(err),
        "cs5": mean((err <= CS_THRESHOLD).astype(np.float64)),
        "mae_expected": mean(err_expected),
        "cs5_expected": mean((err_expected <= CS_THRESHOLD).astype(np.float64)),
        "gender_acc": mean(gender_ok[known].astype(np.float64)),
        "n_gender": int(known.sum()),
        "mae_by_decade": by_decade,
        "mae_by_decade_expected": by_decade_expected,
        "gender_acc_by_gender": {name: mean(gender_ok[gender_true == value].astype(np.float64))
                                 for name, value in (("female", 0), ("male", 1))},
    }


def decade_names(ages):
    """Age decade of each age as a name: "0-9", "10-19", … "90-99", "100+"."""
    decades = np.minimum(np.asarray(ages, dtype=np.float64) // 10, 10).astype(np.int64)
    return np.array(["100+" if d == 10 else f"{10 * d}-{10 * d + 9}" for d in decades], dtype=object)


def race_name(code):
    """Name of a UTKFace race code (``config.RACE_NAMES``), "race N" beyond them, "unknown" for None."""
    if code is None:
        return "unknown"
    return config.RACE_NAMES[code] if 0 <= code < len(config.RACE_NAMES) else f"race {code}"


def group_summary(age_true, age_pred, age_expected, gender_true, gender_pred):
    """Figures of one group: n, mae, mae_expected, cs5, then gender accuracy and its count over all ages
    (gender_acc, n_gender), under ``config.CHILD_AGE`` (``*_under10``) and from it up (``*_age10plus``)."""
    age_true = np.asarray(age_true, dtype=np.float64)
    err = np.abs(np.asarray(age_pred, dtype=np.float64) - age_true)
    err_expected = np.abs(np.asarray(age_expected, dtype=np.float64) - age_true)
    gender_true = np.asarray(gender_true, dtype=np.int64)
    gender_ok = (np.asarray(gender_pred, dtype=np.int64) == gender_true).astype(np.float64)
    known = gender_true != config.UNKNOWN_GENDER
    child = age_true < config.CHILD_AGE

    def mean(values):
        return float(values.mean()) if values.size else None

    result = {"n": int(age_true.size), "mae": mean(err), "mae_expected": mean(err_expected),
              "cs5": mean((err <= CS_THRESHOLD).astype(np.float64))}
    for suffix, mask in (("", known), (f"_under{config.CHILD_AGE}", known & child),
                         (f"_age{config.CHILD_AGE}plus", known & ~child)):
        result["gender_acc" + suffix], result["n_gender" + suffix] = mean(gender_ok[mask]), int(mask.sum())
    return result


def fairness_report(age_true, age_pred, age_expected, gender_true, gender_pred, race=None):
    """``group_summary`` of everyone ("all") and by group: "by_race" (only when ``race``, a code or None
    per sample, knows any), "by_gender" ("female", "male"; unknown gender left out) and "by_decade"."""
    columns = [np.asarray(c) for c in (age_true, age_pred, age_expected, gender_true, gender_pred)]

    def summarise(mask):
        return group_summary(*(c[mask] for c in columns))

    ages, genders = columns[0], columns[3].astype(np.int64)
    report = {"all": summarise(np.ones(len(ages), bool))}
    if race is not None and any(code is not None for code in race):
        names = np.array([race_name(code) for code in race], dtype=object)
        known_codes = sorted({code for code in race if code is not None})
        order = [race_name(code) for code in known_codes] + (["unknown"] if None in race else [])
        report["by_race"] = {name: summarise(names == name) for name in order}
    report["by_gender"] = {name: summarise(genders == value) for name, value in (("female", 0), ("male", 1))
                           if (genders == value).any()}
    decades = decade_names(ages)
    report["by_decade"] = {name: summarise(decades == name)
                           for name in dict.fromkeys(decades[np.argsort(ages, kind="stable")])}
    return report


def cumulative_scores(age_true, age_pred, max_error=20):
    """CS@t for t = 0..max_error: fraction of samples with ``|error| <= t``."""
    err = np.abs(np.asarray(age_pred, dtype=np.float64) - np.asarray(age_true, dtype=np.float64))
    if err.size == 0:
        return np.zeros(max_error + 1)
    return np.array([(err <= t).mean() for t in range(max_error + 1)])


class AgeGenderMetric:
    """Accumulates network outputs and labels batch by batch; ``get()`` gives the epoch's metrics."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget everything seen so far."""
        self._parts = {key: [] for key in ("age_true", "age_pred", "age_expected", "gender_true",
                                           "gender_pred", "gender_ce", "age_ce")}

    def update(self, label, fc1, pad=0):
        """Add a batch: ``label`` (N, 101) and ``fc1`` (N, 202) arrays; the last ``pad`` rows are padding."""
        label = np.asarray(label)
        fc1 = np.asarray(fc1, dtype=np.float32)
        keep = len(label) - int(pad or 0)
        label, fc1 = label[:keep], fc1[:keep]
        gender_ce, age_ce = losses(fc1, label)
        values = {"age_true": label_ages(label), "age_pred": decode_age(fc1),
                  "age_expected": decode_age_expected(fc1), "gender_true": label_genders(label),
                  "gender_pred": decode_gender(fc1)[0], "gender_ce": gender_ce, "age_ce": age_ce}
        for key, value in values.items():
            self._parts[key].append(value)

    @property
    def num_samples(self):
        """How many (unpadded) samples were added since the last reset."""
        return sum(len(part) for part in self._parts["age_true"])

    def get(self):
        """Summary dict: loss terms (gender_loss, age_loss) and the metrics of ``age_gender_summary``."""
        if not self.num_samples:
            return {"n": 0}
        arrays = {key: np.concatenate(parts) for key, parts in self._parts.items()}
        summary = age_gender_summary(arrays["age_true"], arrays["age_pred"], arrays["age_expected"],
                                     arrays["gender_true"], arrays["gender_pred"])
        known = ~np.isnan(arrays["gender_ce"])
        summary["gender_loss"] = float(arrays["gender_ce"][known].mean()) if known.any() else None
        summary["age_loss"] = float(arrays["age_ce"].mean())
        return summary
