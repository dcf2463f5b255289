# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dir writer: an Image applied layer by layer into a directory."""

from __future__ import annotations

import os

from ansible_collections.virt.bootstrap.plugins.module_utils.image import Image
from ansible_collections.virt.bootstrap.plugins.module_utils.layers import ApplyStats, RootfsBuilder


def write_dir(image: Image, root: str, max_size: int) -> ApplyStats:
    """Build the rootfs of `image` in `root`, which must not exist yet (its parent is private)."""
    os.mkdir(root, 0o700)
    with RootfsBuilder(root, max_size=max_size) as builder:
        count = len(image.layers)
        for number, layer in enumerate(image.layers, 1):
            builder.apply_layer(layer, label='layer %d/%d' % (number, count))
        builder.finish()
        return builder.stats
