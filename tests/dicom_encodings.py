"""Re-encoding a synthetic DICOM file (uncompressed 16-bit MONOCHROME2, as written by
``spinepipe.synth.dicom_writer``) into the common transfer syntaxes, for decoding tests.

``SYNTAXES`` maps a short name to ``(transfer syntax UID, lossless)``; ``reencode(src, dst,
uid)`` writes ``dst`` in that syntax, keeping SOPInstanceUID and every geometry tag, and
returns the pixels that were encoded (what a lossless decode must give back bit for bit,
and what a lossy decode must be close to). JPEG Baseline is 8-bit only: the pixels are
rescaled to 0..255 first, so its reference is that 8-bit copy, not the source.

Encoders: pydicom itself (uncompressed, deflated, big endian with the pixel bytes swapped by
hand, RLE), Pillow (JPEG baseline), GDCM (JPEG Lossless SV1, which pydicom cannot encode),
pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import uid
from pydicom.encaps import encapsulate

SYNTAXES: dict[str, tuple[str, bool]] = {
    "implicit_vr_le": (uid.ImplicitVRLittleEndian, True),            # 1.2.840.10008.1.2
    "explicit_vr_le": (uid.ExplicitVRLittleEndian, True),            # 1.2.840.10008.1.2.1
    "deflated_explicit_vr_le": (uid.DeflatedExplicitVRLittleEndian, True),  # 1.2.840.10008.1.2.1.99
    "explicit_vr_be": (uid.ExplicitVRBigEndian, True),               # 1.2.840.10008.1.2.2
    "rle_lossless": (uid.RLELossless, True),                         # 1.2.840.10008.1.2.5
    "jpeg_baseline_8bit": (uid.JPEGBaseline8Bit, False),             # 1.2.840.10008.1.2.4.50
    "jpeg_lossless_sv1": (uid.JPEGLosslessSV1, True),                # 1.2.840.10008.1.2.4.70
    "jpeg_ls_lossless": (uid.JPEGLSLossless, True),                  # 1.2.840.10008.1.2.4.80
    "jpeg_ls_near_lossless": (uid.JPEGLSNearLossless, False),        # 1.2.840.10008.1.2.4.81
    "jpeg2000_lossless": (uid.JPEG2000Lossless, True),               # 1.2.840.10008.1.2.4.90
    "jpeg2000": (uid.JPEG2000, False),                               # 1.2.840.10008.1.2.4.91
}

JLS_NEAR_ERROR = 2        # JPEG-LS near-lossless: max absolute error per pixel
J2K_COMPRESSION = [10.0]  # JPEG 2000 lossy: compression ratio of its single quality layer
JPEG_QUALITY = 90         # JPEG baseline (Pillow)


def _write(ds: pydicom.Dataset, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(dst, ds, enforce_file_format=True)


def _to_8bit(pixels: NDArray) -> NDArray[np.uint8]:
    high = max(float(pixels.max()), 1.0)
    return np.round(pixels.astype(np.float64) * 255.0 / high).astype(np.uint8)


def _jpeg_baseline(ds: pydicom.Dataset, pixels: NDArray) -> NDArray[np.uint8]:
    from PIL import Image

    pixels8 = _to_8bit(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels8).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    for keyword in ("WindowCenter", "WindowWidth"):  # they were for the 16-bit values
        if keyword in ds:
            del ds[keyword]
    return pixels8


def _gdcm_jpeg_lossless_sv1(src: Path, dst: Path) -> None:
    """GDCM re-encodes the file itself (pydicom has no JPEG lossless encoder)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {src} as JPEG Lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {dst}")


def reencode(src: Path, dst: Path, syntax_uid: str) -> NDArray:
    """Write ``src`` to ``dst`` in ``syntax_uid``; return the pixels encoded (the reference)."""
    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError(f"{src}: expected an uncompressed source, got {ds.file_meta.TransferSyntaxUID.name}")
    pixels = ds.pixel_array.copy()  # decoded while the source syntax still applies
    syntax = uid.UID(syntax_uid)
    if syntax in (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian,
                  uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
        _write(ds, dst)
    elif syntax == uid.ExplicitVRBigEndian:
        # pydicom writes the other elements big endian but leaves OW bytes as they are
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).tobytes()
        _write(ds, dst)
    elif syntax == uid.JPEGBaseline8Bit:
        pixels = _jpeg_baseline(ds, pixels)
        _write(ds, dst)
    elif syntax == uid.JPEGLosslessSV1:
        _gdcm_jpeg_lossless_sv1(src, dst)
    elif syntax == uid.JPEGLSNearLossless:
        ds.compress(syntax, pixels, generate_instance_uid=False, jls_error=JLS_NEAR_ERROR)
        _write(ds, dst)
    elif syntax == uid.JPEG2000:
        ds.compress(syntax, pixels, generate_instance_uid=False, j2k_cr=J2K_COMPRESSION)
        _write(ds, dst)
    elif syntax in (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless):
        ds.compress(syntax, pixels, generate_instance_uid=False)
        _write(ds, dst)
    else:
        raise ValueError(f"no encoder for transfer syntax {syntax_uid}")
    return pixels


def reencode_series(src_dir: Path, dst_dir: Path, syntax_uid: str) -> dict[str, NDArray]:
    """Every ``*.dcm`` of a series folder re-encoded into ``dst_dir`` (same file names);
    file name -> the pixels encoded."""
    return {p.name: reencode(p, dst_dir / p.name, syntax_uid) for p in sorted(src_dir.glob("*.dcm"))}
