import numpy as np
import pytest

from runtime.contract import META_TOKENS
from runtime.metadata import Vocabulary, encode_metadata


def test_hour_circle_has_24_distinct_positions():
    m = encode_metadata(24, hour=np.arange(24, dtype=float))
    assert len({tuple(np.round(r, 6)) for r in m["hour"]}) == 24
    # 23 h is next to 0 h, not on top of it (PSM's /23 collision).
    assert 0 < np.linalg.norm(m["hour"][23] - m["hour"][0]) < np.linalg.norm(m["hour"][12] - m["hour"][0])


def test_poles_and_dateline():
    m = encode_metadata(3, lat=np.array([90.0, -90.0, 0.0]), lon=np.array([0.0, 0.0, 180.0]))
    assert np.linalg.norm(m["location"][0] - m["location"][1]) == pytest.approx(2.0)
    m2 = encode_metadata(2, lat=0.0, lon=np.array([180.0, -180.0]))
    np.testing.assert_allclose(m2["location"][0], m2["location"][1], atol=1e-6)


def test_absent_tokens_are_zero_and_flagged():
    m = encode_metadata(2, hour=np.array([5.0, np.nan]), source=1)
    present = dict(zip(META_TOKENS, m["present"].T, strict=True))
    assert present["hour"].tolist() == [1.0, 0.0]
    assert present["source"].tolist() == [1.0, 1.0]
    assert present["location"].tolist() == [0.0, 0.0]
    assert not m["hour"][1].any() and not m["location"].any() and not m["month"].any()


def test_half_a_location_is_an_error():
    with pytest.raises(ValueError, match="both lat and lon"):
        encode_metadata(1, lat=10.0)


def test_vocabulary_names_choices_on_error():
    vocab = Vocabulary(["yfcc", "iNat"])
    assert vocab.id("iNat") == 1
    with pytest.raises(ValueError, match="yfcc, iNat"):
        vocab.id("youtube")
