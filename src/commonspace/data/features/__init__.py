"""Feature extraction: speech features (``audio``) and train-only PCA whitening (``pca``)."""

from commonspace.data.features.audio import (
    center_frames,
    frame,
    mel_filterbank,
    mfcc,
    read_wav,
    resample,
    spectrogram,
    utterance_mfcc,
)
from commonspace.data.features.pca import PCAWhitener

__all__ = [
    "PCAWhitener",
    "center_frames",
    "frame",
    "mel_filterbank",
    "mfcc",
    "read_wav",
    "resample",
    "spectrogram",
    "utterance_mfcc",
]
