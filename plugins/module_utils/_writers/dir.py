# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The dir writer: an Image applied layer by layer into a directory."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import ApplyStats, IdMapper, RootfsBuilder
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import Progress


def write_dir(image: Image, root: str, max_size: int, id_mapper: t.Optional[IdMapper] = None,
              progress: t.Optional[Progress] = None, device_nodes: bool = False) -> ApplyStats:
    """Build the rootfs of `image` in `root`, which must not exist yet (its parent is private)."""
    progress = progress or Progress(None)
    os.mkdir(root, 0o700)
    with RootfsBuilder(root, max_size=max_size, id_mapper=id_mapper, device_nodes=device_nodes) as builder:
        count = len(image.layers)
        progress.start_layers([layer.size for layer in image.layers])
        for index, layer in enumerate(image.layers):
            builder.progress = progress.layer(index, count, layer.size)
            builder.apply_layer(layer, label='layer %d/%d' % (index + 1, count))
        builder.finish()
        return builder.stats
