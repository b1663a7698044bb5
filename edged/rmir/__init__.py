"""RMIR: edged's model archive (manifest, members, optional authenticated encryption).

The archive side (reading, writing, encryption: `cryptography` and more) is imported on first
use: the server reads deployed manifests through edged.rmir.manifest and never opens an archive,
and importing this package comes before every manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edged.rmir.manifest import (
    FORMAT_VERSION,
    ArtifactSpec,
    Manifest,
    NetworkSpec,
    ShapeRange,
    TensorSpec,
)

if TYPE_CHECKING:
    from edged.rmir.archive import (
        ExtractResult,
        RmirRef,
        extract_rmir,
        file_sha256,
        parse_rmir_ref,
        read_manifest,
        write_rmir,
    )

_ARCHIVE = ("ExtractResult", "RmirRef", "extract_rmir", "file_sha256", "parse_rmir_ref", "read_manifest",
            "write_rmir")


def __getattr__(name: str) -> Any:
    if name in _ARCHIVE:
        from edged.rmir import archive

        return getattr(archive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "ArtifactSpec",
    "ExtractResult",
    "Manifest",
    "NetworkSpec",
    "RmirRef",
    "ShapeRange",
    "TensorSpec",
    "extract_rmir",
    "file_sha256",
    "parse_rmir_ref",
    "read_manifest",
    "write_rmir",
]
