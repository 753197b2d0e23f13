"""benchmarks/long_recording.py: a long recording read whole and read for its centre crop give the
same features, and the crop allocates and holds less (the figures in BENCHMARKS.md come from it)."""

import pytest

from benchmarks.long_recording import main, measure


def test_the_crop_reads_the_same_features_with_less_memory():
    result = measure(minutes=1.0, fmt="flac", repeat=1)
    assert result["features_equal"]
    assert result["crop_only"]["peak_mb"] < result["whole_decode"]["peak_mb"] / 2
    assert result["crop_only"]["peak_rss_mb"] < result["whole_decode"]["peak_rss_mb"] / 2  # in fresh processes


@pytest.mark.parametrize("args", [["--minutes", "0"], ["--repeat", "0"], ["--format", "mp4"]])
def test_bad_arguments_exit_2_with_a_sentence(args, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and args[0] in capsys.readouterr().err


def test_clap_fusion_read_for_its_frames_gives_the_features_of_the_whole_recording():
    assert measure(minutes=0.5, fmt="wav", repeat=1, front_end="clap-fusion")["features_equal"]
