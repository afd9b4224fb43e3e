"""Direct tests of what a reviewer sees: field-of-view detection, de-identification, lesion description, EMA."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.scope import content_area, deidentify
from data.synthetic import synthetic_frame
from models.runtime import ModelEMA
from review.describe import clean_mask, lesions


def _frame_with_burned_in_text():
    """A round field of view (a synthetic scene inside a circle) on black, with a name and a date burned into the
    black corners, as scopes do."""
    scene = synthetic_frame(np.random.default_rng(0), (288, 384))["image"]
    disc = np.zeros((288, 384), np.uint8)
    cv2.circle(disc, (192, 144), 130, 1, -1)
    f = scene * disc[:, :, None]
    boxes = [(2, 6, 100, 24), (300, 266, 384, 286)]  # x0, y0, x1, y1 in the black corners
    cv2.putText(f, "DOE JOHN", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    cv2.putText(f, "12/03/26", (302, 280), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return f, boxes, disc


def test_field_of_view_is_the_scope_disc_not_the_burned_in_text():
    f, boxes, disc = _frame_with_burned_in_text()
    area = content_area(f)
    assert (area & disc).sum() / (area | disc).sum() > 0.97
    for x0, y0, x1, y1 in boxes:
        assert area[y0:y1, x0:x1].sum() == 0


def test_deidentify_leaves_no_burned_in_text_readable_and_keeps_the_field():
    f, boxes, _ = _frame_with_burned_in_text()
    area = content_area(f)
    d = deidentify(f, area)
    assert np.array_equal(d[area > 0], f[area > 0])             # the field of view is untouched
    for x0, y0, x1, y1 in boxes:
        before, after = f[y0:y1, x0:x1].max(2), d[y0:y1, x0:x1].max(2)
        assert (before > 128).sum() > 20                          # there was text ...
        assert (after > 128).sum() == 0                           # ... no text-bright pixel is left
        assert after.std() < 0.2 * before.std()                   # and no stroke contrast to read


def test_lesions_are_described_largest_first_and_specks_dropped():
    prob = np.zeros((100, 120), np.float32)
    prob[10:40, 10:60] = 0.9     # 30 x 50
    prob[60:70, 80:90] = 0.7     # 10 x 10
    prob[95, 5] = 0.99           # a one-pixel speck
    area = np.ones_like(prob, np.uint8)
    area[:, 110:] = 0
    prob[50:60, 112:118] = 0.95  # outside the field of view
    mask = clean_mask(prob, area, threshold=0.5, min_area_fraction=0.002)
    assert mask[95, 5] == 0 and mask[55, 115] == 0
    found = lesions(prob, mask, max_points=8)
    assert [d["area_px"] for d in found] == [1500, 100]
    assert found[0]["bbox"] == [10, 10, 50, 30] and found[1]["bbox"] == [80, 60, 10, 10]
    assert found[0]["mean_prob"] == pytest.approx(0.9) and found[1]["max_prob"] == pytest.approx(0.7)
    assert all(len(d["contour"]) <= 8 for d in found)


def test_model_ema_tracks_and_restores():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.75))  # 0 -> 0.5 -> 0.75
    backup = ema.copy_to(model)
    assert torch.allclose(model.weight, torch.full((1, 2), 0.75))
    model.load_state_dict(backup)
    assert torch.allclose(model.weight, torch.ones(1, 2))
