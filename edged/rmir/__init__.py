"""RMIR: edged's model archive (manifest, members, optional authenticated encryption)."""

from edged.rmir.archive import (
    ExtractResult,
    RmirRef,
    extract_rmir,
    file_sha256,
    parse_rmir_ref,
    read_manifest,
    write_rmir,
)
from edged.rmir.manifest import (
    FORMAT_VERSION,
    ArtifactSpec,
    Manifest,
    NetworkSpec,
    ShapeRange,
    TensorSpec,
)

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
