"""Labelled images: ImageFolder datasets, the embedded sample photos, image I/O.

``load_dataset("samples" | folder, image_size)`` -> :class:`ImageFolderDataset`;
``load_image(path, image_size)`` -> (3, H, W) in [0, 1]; ``save_png(pixels, path)``.
"""

from pyvlmx.data.folder import (IMG_EXTENSIONS, ImageFolderDataset, Skipped, UnreadableImageError, load_dataset,
                                load_image, readable_class_name, resize_center_crop, save_png)
from pyvlmx.data.imagenet import IMAGENET_CLASSNAMES, IMAGENET_WNIDS, wnid_to_index, wnid_to_name

__all__ = ["IMAGENET_CLASSNAMES", "IMAGENET_WNIDS", "IMG_EXTENSIONS", "ImageFolderDataset", "Skipped",
           "UnreadableImageError", "load_dataset", "load_image", "readable_class_name", "resize_center_crop",
           "save_png", "wnid_to_index", "wnid_to_name"]
