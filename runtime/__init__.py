"""The torch-free runtime every package stands on: tiles, imagery, metadata, text and audio
input, the model bundle (ONNX graphs) and PCME++ scoring. It imports no other package of the project."""
