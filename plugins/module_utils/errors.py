# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed errors raised by the engine; the module and the CLI turn them into messages."""

from __future__ import annotations


class BootstrapError(Exception):
    """Base class: every failure the engine reports on purpose."""


class SourceError(BootstrapError):
    """The source URI is malformed, missing, or does not hold a usable image."""


class PlatformError(SourceError):
    """No image in the source matches the requested platform."""


class LayerError(BootstrapError):
    """A layer cannot be read: corrupt or truncated compression or tar data."""


class DigestMismatch(LayerError):
    """Content read does not hash to the digest that names it."""


class HostileLayer(LayerError):
    """A layer entry tries to reach outside the root, or is not what a layer may hold."""


class SizeLimitExceeded(LayerError):
    """The layers expand to more than the allowed size."""


class DestinationError(BootstrapError):
    """The destination cannot be used as asked (not ours, busy, not a directory)."""


class ToolError(BootstrapError):
    """A program the engine needs (qemu-img, mkfs, ...) is missing or failed."""
