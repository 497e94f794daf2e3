"""The decision: a copy only with proof (same bytes, a near hash, geometric agreement), a
score that is the fitted model's probability, and words on why; the photometric view."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import skimage.data

from echoimage.features import photometric
from echoimage.features.orb import mirror_features, orb_detect, orb_features
from echoimage.search import evidence
from echoimage.search.evidence import MODEL, Proof, ScoreModel
from echoimage.search.rerank import match_orb, spread


def test_proof_is_the_same_bytes_a_near_hash_or_geometry() -> None:
    assert evidence.proof(True, 0, 40) is Proof.SAME_BYTES
    assert evidence.proof(False, evidence.MIN_INLIERS, 40) is Proof.GEOMETRY
    assert evidence.proof(False, evidence.MIN_INLIERS - 1, 40) is Proof.NONE
    assert evidence.proof(False, 0, evidence.NEAR_HASH) is Proof.NEAR_HASH
    assert evidence.proof(False, 0, evidence.NEAR_HASH + 1) is Proof.NONE


@pytest.mark.parametrize("ssim,hash_distance", [(0.99, 6), (0.95, 12), (0.72, 16),
                                                (1.0, 30)])
def test_ssim_and_a_distant_hash_never_make_a_copy(ssim: float, hash_distance: int) -> None:
    """Whatever the SSIM, the matches and the threshold: no proof, no copy."""
    for inliers in range(evidence.MIN_INLIERS):
        p = evidence.score(False, inliers, 40, 0.0, ssim, hash_distance)
        assert not evidence.is_copy(False, inliers, hash_distance, p, 0.0)
        assert not evidence.is_copy(False, inliers, hash_distance, 1.0, 0.5)


def test_the_score_is_the_models_probability_and_grows_with_the_evidence() -> None:
    assert len(MODEL.weights) == len(evidence.FEATURES)
    assert evidence.score(True, 0, 0, 0.0, float("nan"), 30) == 1.0
    x = evidence.features(False, 40, 50, 0.5, 0.8, 10)
    z = MODEL.intercept + sum(w * v for w, v in zip(MODEL.weights, x, strict=True))
    assert evidence.score(False, 40, 50, 0.5, 0.8, 10) == pytest.approx(1 / (1 + math.exp(-z)))
    # more agreeing keypoints, a nearer hash, a higher SSIM: never a lower probability
    # (the fit gives them positive weights)
    assert all(w > 0 for w in MODEL.weights)
    weak = evidence.score(False, 9, 40, 0.1, float("nan"), 30)
    assert evidence.score(False, 60, 70, 0.1, float("nan"), 30) > weak
    assert evidence.score(False, 9, 40, 0.1, 0.9, 10) > weak
    # proof moves the probability across the equal-priors boundary, chance evidence not
    assert evidence.score(False, 7, 40, 0.0, float("nan"), 30) < 0.5
    assert evidence.score(False, 8, 10, 0.2, float("nan"), 30) > 0.5
    assert evidence.score(False, 0, 0, 0.0, 0.6, 4) > 0.5


def test_score_model_checks_its_input() -> None:
    model = ScoreModel("t", (1.0, 2.0), -1.0, "test")
    assert model.probability((0.0, 0.0)) == pytest.approx(1 / (1 + math.e))
    assert model.probability((-1e6, 0.0)) == 0.0
    with pytest.raises(ValueError, match="features"):
        model.probability((1.0,))


def test_why_says_what_proves_it_or_that_nothing_does() -> None:
    assert evidence.why(True, 0, 30, 0.0, True) == "the same bytes"
    assert evidence.why(False, 42, 20, 0.63, True, mirror=True) == \
        "42 keypoints agree on one transform (mirrored) over 63% of the match"
    assert evidence.why(False, 0, 3, 0.0, True) == "pHash 3 bits apart"
    assert evidence.why(False, 4, 18, 0.0, False) == \
        "no proof: 4 keypoints agree, pHash 18 bits apart"
    assert "under the threshold" in evidence.why(False, 9, 18, 0.1, False)


def test_spread_is_the_inliers_hull_over_the_shared_area() -> None:
    h = np.eye(3)
    pts = np.float32([[0, 0], [50, 0], [50, 50], [0, 50]])
    # the query (100×100) lies wholly in the catalogue image: the hull is a quarter
    assert spread(pts, h, (100, 100), (200.0, 200.0)) == pytest.approx(0.25)
    # the catalogue image covers only the query's left half: half of it is the hull
    assert spread(pts, h, (100, 100), (50.0, 100.0)) == pytest.approx(0.5)
    assert spread(pts[:2], h, (100, 100), (200.0, 200.0)) == 0.0


def _gray(name: str) -> np.ndarray:
    arr = getattr(skimage.data, name)()
    return arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)


def test_mirror_features_from_one_detection_match_the_mirror_image() -> None:
    gray = _gray("astronaut")
    feats, kps = orb_detect(gray, 500)
    assert len(kps) == len(feats)
    assert np.allclose([k.pt for k in kps], feats.keypoints[:, :2])  # the same order
    assert np.array_equal(feats.descriptors, orb_features(gray, 500).descriptors)
    mirrored = mirror_features(gray, kps, 500)
    truth = orb_features(np.ascontiguousarray(gray[:, ::-1]), 500)
    assert match_orb(mirrored, truth).inliers >= 0.8 * len(truth)
    assert match_orb(feats, truth).inliers < 30  # ORB itself is not mirror-invariant
    assert len(mirror_features(gray, kps[:100], 500)) <= 100


def test_noise_and_contrast_estimates() -> None:
    gray = _gray("camera")
    rng = np.random.default_rng(0)
    noisy = np.clip(gray + rng.normal(0, 30, gray.shape), 0, 255).astype(np.uint8)
    assert photometric.noise_sigma(gray) < 8
    assert photometric.noise_sigma(noisy) == pytest.approx(30, rel=0.25)
    white = (255 * (gray / 255.0) ** 0.1).astype(np.uint8)
    assert photometric.contrast(white) < photometric.LOW_CONTRAST <= photometric.contrast(gray)
    assert not photometric.needs_normalising(gray)
    assert photometric.needs_normalising(noisy) and photometric.needs_normalising(white)
    assert photometric.contrast(photometric.normalised(white)) > photometric.LOW_CONTRAST
    assert photometric.noise_sigma(photometric.normalised(noisy)) < \
        photometric.noise_sigma(noisy)
    with pytest.raises(ValueError):
        photometric.normalised(np.zeros((4, 4, 3), np.uint8))
