"""Training heads on top of ``fc1``: the gender softmax and the 100 ordinal age classifiers.

``fc1`` is (N, 202): ``fc1[:, 0:2]`` gender logits, ``fc1[:, 2+2k : 4+2k]`` the pair ("age <= k",
"age > k"). The label ``softmax_label`` is (N, 101): ``[gender, b_1 .. b_100]`` with ``b_j = 1`` for
``j <= age`` and gender 9999 for unknown.

The age loss is the sum of the 100 two-way cross-entropies averaged over the batch, i.e. exactly
what the original's 100 ``SoftmaxOutput(normalization='valid')`` heads optimise, written as one
``log_softmax`` + ``MakeLoss`` so that label smoothing is exact and the per-sample loss is an output.
"""
import mxnet as mx

from . import config


def age_targets(age_bits, smoothing=0.0, sigma=0.0):
    """Soft targets (N, 100, 2) for the ordinal pairs from the 0/1 bits (N, 100): (1 - b, b), smoothed.

    ``sigma`` > 0 replaces the bits by P(A > k) for A ~ Normal(age, sigma²), k = 0..99, with the label
    ``age`` = sum of the bits: pair k's hard target is "age >= k + 1", i.e. A > k + 0.5.
    """
    if sigma > 0:
        age = mx.sym.sum(age_bits, axis=1, keepdims=True)                               # (N, 1)
        thresholds = mx.sym.arange(0, config.AGE_CLASSES).reshape((1, -1)) + 0.5        # (1, 100)
        z = mx.sym.broadcast_sub(age, thresholds) / (sigma * 2.0 ** 0.5)
        older = mx.sym.BlockGrad(0.5 * (1.0 + mx.sym.erf(z)))
    else:
        older = age_bits
    older = older * (1.0 - 2.0 * smoothing) + smoothing
    return mx.sym.stack(1.0 - older, older, axis=2)


def get_loss_symbol(fc1, gender_weight=1.0, age_weight=1.0, age_smoothing=0.0, age_sigma=0.0):
    """Group ``[gender_softmax (N,2), age_loss (N,1), BlockGrad(fc1) (N,202)]`` for training.

    ``gender_weight`` scales the gradient of the gender loss (ignoring labels 9999, mean over the
    known ones); ``age_weight`` scales the summed ordinal loss; ``age_smoothing`` moves that much
    probability mass of each ordinal target to the other class; ``age_sigma`` (years) makes the targets
    those of a Gaussian around the label (:func:`age_targets`).
    """
    label = mx.sym.var("softmax_label")
    gender_label = mx.sym.slice_axis(label, axis=1, begin=0, end=1).reshape((-1,))
    age_bits = mx.sym.slice_axis(label, axis=1, begin=1, end=1 + config.AGE_CLASSES)

    gender_logits = mx.sym.slice_axis(fc1, axis=1, begin=0, end=2)
    gender = mx.sym.SoftmaxOutput(gender_logits, gender_label, use_ignore=True,
                                  ignore_label=config.UNKNOWN_GENDER, normalization="valid",
                                  grad_scale=gender_weight, name="gender_softmax")

    age_logits = mx.sym.slice_axis(fc1, axis=1, begin=2, end=config.FC1_SIZE)
    age_logits = age_logits.reshape((0, config.AGE_CLASSES, 2))
    log_prob = mx.sym.log_softmax(age_logits, axis=2)
    # (N, 1): MakeLoss only divides by the batch size for inputs of two or more dimensions
    per_sample = -mx.sym.sum(age_targets(age_bits, age_smoothing, age_sigma) * log_prob, axis=(1, 2),
                             keepdims=True)
    per_sample = per_sample.reshape((-1, 1))
    age = mx.sym.MakeLoss(per_sample, grad_scale=age_weight, normalization="batch", name="age_loss")

    return mx.sym.Group([gender, age, mx.sym.BlockGrad(fc1, name="fc1_out")])
