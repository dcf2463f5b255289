# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Delete the top layer of LAYOUT:TAG from a test registry's storage, so that pulling it fails (test helper).

    python3 drop-top-layer.py LAYOUT TAG REGISTRY_STORAGE

The manifest stays: the tag still resolves, and only the download of that layer fails.
"""

from __future__ import annotations

import json
import os
import sys


def blob_path(root: str, digest: str) -> str:
    algorithm, hexdigest = digest.split(':', 1)
    return os.path.join(root, algorithm, hexdigest)


def main(layout: str, tag: str, storage: str) -> int:
    with open(os.path.join(layout, 'index.json'), encoding='utf-8') as stream:
        index = json.load(stream)
    manifest_digest = next(entry['digest'] for entry in index['manifests']
                           if entry.get('annotations', {}).get('org.opencontainers.image.ref.name') == tag)
    with open(blob_path(os.path.join(layout, 'blobs'), manifest_digest), encoding='utf-8') as stream:
        top = json.load(stream)['layers'][-1]['digest']
    algorithm, hexdigest = top.split(':', 1)
    data = os.path.join(storage, 'docker', 'registry', 'v2', 'blobs', algorithm, hexdigest[:2], hexdigest, 'data')
    os.unlink(data)
    print(top)
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
