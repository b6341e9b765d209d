"""Turning the 202 ``fc1`` values of a face into gender and age.

Layout (the original's): ``fc1[0:2]`` are the female/male logits; ``fc1[2 + 2k : 4 + 2k]`` is the pair
("age <= k", "age > k") for k = 0..99.
"""
import numpy as np

from .config import AGE_CLASSES

AGE_DECODINGS = ("votes", "expected", "mean")


def _softmax_pairs(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _age_pairs(fc1):
    fc1 = np.asarray(fc1, dtype=np.float32)
    return fc1[..., 2:2 + 2 * AGE_CLASSES].reshape(fc1.shape[:-1] + (AGE_CLASSES, 2))


def decode_gender(fc1):
    """Return ``(gender, prob_male)``: gender 1 = male, 0 = female (ties pick female, as argmax)."""
    fc1 = np.asarray(fc1, dtype=np.float32)
    logits = fc1[..., 0:2]
    gender = (logits[..., 1] > logits[..., 0]).astype(np.int64)
    prob_male = _softmax_pairs(logits)[..., 1]
    return gender, prob_male


def decode_age(fc1):
    """The original's age: the number of "older than k" classifiers that vote yes (0..100)."""
    pairs = _age_pairs(fc1)
    return (pairs[..., 1] > pairs[..., 0]).sum(axis=-1).astype(np.int64)


def decode_age_expected(fc1):
    """Expected age from the classifiers' probabilities: E[age] = sum_k P(age > k)."""
    return _softmax_pairs(_age_pairs(fc1))[..., 1].sum(axis=-1)


def decode_age_as(fc1, method="votes"):
    """Whole-year ages by ``method`` (one of :data:`AGE_DECODINGS`): ``votes`` the original's count,
    ``expected`` the rounded expected value, ``mean`` the rounded mean of the two."""
    if method == "votes":
        return decode_age(fc1)
    if method == "expected":
        return np.rint(decode_age_expected(fc1)).astype(np.int64)
    if method == "mean":
        return np.rint((decode_age(fc1) + decode_age_expected(fc1)) / 2).astype(np.int64)
    raise ValueError(f"unknown age decoding '{method}'; choose one of {', '.join(AGE_DECODINGS)}")


def decode_faces(fc1, age_decoding="votes"):
    """Decode an (N, 202) array into a list of dicts with age (by ``age_decoding``, see
    :func:`decode_age_as`), age_expected, gender and its probability."""
    fc1 = np.atleast_2d(np.asarray(fc1, dtype=np.float32))
    gender, prob_male = decode_gender(fc1)
    ages = decode_age_as(fc1, age_decoding)
    expected = decode_age_expected(fc1)
    return [
        {
            "age": int(ages[i]),
            "age_expected": round(float(expected[i]), 2),
            "gender": "M" if gender[i] == 1 else "F",
            "gender_prob_male": round(float(prob_male[i]), 4),
        }
        for i in range(fc1.shape[0])
    ]
