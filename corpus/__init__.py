"""The demo world's training data: public assets acquired and cached, soundscape rules, samples."""
