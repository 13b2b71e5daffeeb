"""The shape classifier: is this footprint a soma?

A small convolutional network (conv–conv–pool–conv–pool–dense, as in the CaImAn paper) looks
at each component's footprint, cropped around its centre and scaled by the neuron radius
(:func:`component_crops`), and gives the probability that it is a soma (``cnn_preds``). The
forward pass is NumPy (:mod:`.cnn`), with weights shipped in the package; training needs PyTorch
(``pip install somascope[train]``, :mod:`.train`). :func:`label_components` labels CNMF
components against a simulation's ground truth, which is how the training set is built.
"""

from __future__ import annotations

from .crops import CROP_SIZE, WINDOW_RADII, component_crops
from .labels import CLASSES, Labels, frame_offset, label_components

__all__ = ["CLASSES", "CROP_SIZE", "WINDOW_RADII", "Labels", "component_crops", "frame_offset",
           "label_components"]
