"""Measuring samples against real images: fidelity (FD, KID, SWD), the in-domain feature
classifier, sharpness, object detection, statistics, and the crop effect."""
