"""Core library of the segmenter: model factory, data, training, checkpoints, prediction."""
