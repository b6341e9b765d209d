"""Reading the original code's golden outputs (../shared/reference/mtcnn) and comparing against them."""
import json
import os

import numpy as np


def load_reference(reference_dir, image_name):
    """Return ``(faces, boxes (N,4), landmarks (N,5,2))`` of the golden JSON of a sample image."""
    with open(os.path.join(reference_dir, os.path.splitext(image_name)[0] + ".json")) as f:
        faces = json.load(f)["faces"]
    boxes = np.array([face["bbox_x1y1x2y2"] for face in faces]).reshape(-1, 4)
    landmarks = np.array([face["landmarks_5x2"] for face in faces]).reshape(-1, 5, 2)
    return faces, boxes, landmarks


def near_ties(reference_dir, image_name, margin=0.01):
    """Per face: how many age classifiers, and whether the gender, are within ``margin`` of a tie in the golden fc1.

    The same landmarks can give an aligned crop one grey level off at a few pixels, which can flip
    exactly those classifiers; everything else must match.
    """
    fc1 = np.load(os.path.join(reference_dir, os.path.splitext(image_name)[0] + "_allfaces_fc1.npy"))
    pairs = fc1[:, 2:].reshape(len(fc1), -1, 2)
    age_ties = (np.abs(pairs[:, :, 1] - pairs[:, :, 0]) < margin).sum(axis=1)
    gender_ties = np.abs(fc1[:, 1] - fc1[:, 0]) < margin
    return age_ties, gender_ties


def assert_estimates_match(reference_dir, image_name, ages, genders):
    """Ages (ints) and genders ("F"/"M") equal the golden ones, up to classifiers at a near-tie."""
    faces, _, _ = load_reference(reference_dir, image_name)
    age_ties, gender_ties = near_ties(reference_dir, image_name)
    ref_ages = np.array([face["age"] for face in faces])
    ref_genders = np.array(["M" if face["gender"] == 1 else "F" for face in faces])
    ages, genders = np.asarray(ages), np.asarray(genders)
    assert np.all(np.abs(ages - ref_ages) <= age_ties), np.nonzero(ages != ref_ages)
    assert np.all((genders == ref_genders) | gender_ties), np.nonzero(genders != ref_genders)
