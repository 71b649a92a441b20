"""Decoding one DICOM file into a native-endian float32 2D image, whatever its transfer syntax.

Every stage that needs pixels (localizer stacks, crops, ``dicom_io.read_series``) goes
through :func:`decode_slice`, so every transfer syntax is decoded the same way everywhere:

1. pydicom reads the file and decodes the pixel data with its built-in code (uncompressed
   little/big endian, deflated) or through its pixel-data plugins, installed by
   ``requirements.txt`` and tried in the order of ``PLUGIN_PREFERENCE`` (the next one when
   one fails): pylibjpeg (pylibjpeg-libjpeg for JPEG baseline/extended/lossless incl. SV1
   and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle for RLE), pyjpegls (JPEG-LS
   through CharLS), pydicom's own RLE decoder, Pillow, GDCM;
2. if pydicom cannot read the file, or no plugin decodes it, GDCM (python-gdcm) reads the
   file itself, then SimpleITK (which ships its own GDCM) does.

The result is always ``float32`` in native byte order (a big-endian file's ``>u2`` pixels
included), 2D ``(Rows, Columns)``. Values are the *modality* values: the stored values,
times RescaleSlope plus RescaleIntercept when the file carries them (files without those
tags, the usual MR case and every synthetic file, keep their raw stored values, as before).
MONOCHROME1 is not inverted. A multi-frame file (NumberOfFrames > 1, e.g. an enhanced MR
series in one file) and a colour file (SamplesPerPixel > 1) are refused: one file is one
slice of a series here, and a guessed frame would not match the file's geometry.

Failures raise :class:`SliceDecodeError` naming the file and the reasons of every decoder
tried. :func:`decode_slices` decodes a whole series and isolates failures per slice: a slice
that cannot be decoded is ``None`` with its reason, and never takes the series down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

log = logging.getLogger(__name__)

PathLike = str | Path


class SliceDecodeError(RuntimeError):
    """One DICOM file whose pixels cannot be turned into a 2D image."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DecodedSlices(NamedTuple):
    """The slices of a series in the given order: ``images[i]`` is ``None`` where slice ``i``
    could not be decoded, and ``errors[i]`` then says why (``None`` for decoded slices)."""

    images: list[NDArray[np.float32] | None]
    errors: list[str | None]

    @property
    def ok(self) -> NDArray[np.bool_]:
        return np.array([im is not None for im in self.images], dtype=bool)

    @property
    def n_lost(self) -> int:
        return sum(im is None for im in self.images)


_PLUGIN_WRAPPER = "Unable to decode as exceptions were raised by all available plugins:"


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).replace(_PLUGIN_WRAPPER, "").split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _rescale(image: NDArray[np.float32], slope: object, intercept: object) -> NDArray[np.float32]:
    """Stored -> modality values; absent or unusable slope/intercept leave the image as is."""
    try:
        m = float(slope) if slope not in (None, "") else 1.0
        b = float(intercept) if intercept not in (None, "") else 0.0
    except (TypeError, ValueError):
        log.warning("ignoring unparseable RescaleSlope/Intercept %r/%r", slope, intercept)
        return image
    if not np.isfinite(m) or not np.isfinite(b) or m == 0.0:
        log.warning("ignoring unusable RescaleSlope/Intercept %r/%r", slope, intercept)
        return image
    if m == 1.0 and b == 0.0:
        return image
    return (image * np.float32(m) + np.float32(b)).astype(np.float32, copy=False)


def _as_image(array: np.ndarray, expected: tuple[int, int] | None) -> NDArray[np.float32]:
    """A decoded array as a native float32 2D image, or ValueError when it is not one slice."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"decoded pixels have shape {array.shape}, expected one 2D slice")
    if expected is not None and array.shape != expected:
        raise ValueError(f"decoded pixels have shape {array.shape}, header says {expected}")
    return np.ascontiguousarray(array, dtype=np.float32)  # native byte order whatever the input


class _Refused(Exception):
    """The file decodes but is not a single monochrome slice: no fallback is tried."""


def _check_single_slice(samples: int, frames: int) -> None:
    """Refusals that no other decoder would change: raised as SliceDecodeError reasons."""
    if frames > 1:
        raise _Refused(f"multi-frame file ({frames} frames); one file must be one slice")
    if samples != 1:
        raise _Refused(f"{samples} samples per pixel (colour); only monochrome slices are used")


# pydicom's own plugin order puts GDCM first for every JPEG syntax once python-gdcm is
# installed; the dedicated decoders are tried first instead, GDCM (inside pydicom, then on its
# own) last, so the same decoder handles a syntax on every machine.
PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")


class _QuietPluginFailures(logging.Filter):
    """Drops pydicom's per-plugin failure tracebacks while :func:`decode_slice` runs: it
    collects the same messages into one reason (and one log line) per file."""

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


_QUIET = _QuietPluginFailures()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_QUIET)


def plugin_order(syntax: str) -> tuple[str, ...]:
    """pydicom's installed decoding plugins for a transfer syntax, in the order they are tried
    (``("",)``, pydicom's built-in code, for the uncompressed syntaxes)."""
    available = get_decoder(UID(syntax)).available_plugins
    if not available:
        return ("",)
    return tuple(sorted(available, key=lambda name: (PLUGIN_PREFERENCE + (name,)).index(name)))


def _with_pydicom(path: Path) -> NDArray[np.float32]:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise _Refused("no pixel data element")
    _check_single_slice(int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1))
    expected = (int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise RuntimeError("no Transfer Syntax UID in the file meta information")
    failures = []
    for plugin in plugin_order(syntax):
        _QUIET.active.on = True
        try:
            array = pixel_array(ds, decoding_plugin=plugin)
        except Exception as error:  # each plugin raises its own kinds
            failures.append(f"{plugin or 'native'}: {_error_text(error)}")
            continue
        finally:
            _QUIET.active.on = False
        log.debug("%s: decoded by pydicom plugin %r", path, plugin or "native")
        image = _as_image(array, expected)
        return _rescale(image, ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    raise RuntimeError(f"{UID(syntax).name}: " + "; ".join(failures))


_GDCM_DTYPES = {"UINT8": "u1", "INT8": "i1", "UINT16": "u2", "INT16": "i2", "UINT32": "u4",
                "INT32": "i4", "FLOAT32": "f4", "FLOAT64": "f8"}


def _with_gdcm(path: Path) -> NDArray[np.float32]:
    import gdcm  # python-gdcm; optional at import time of this module

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError("GDCM cannot read the file")
    image = reader.GetImage()
    frames = image.GetDimension(2) if image.GetNumberOfDimensions() == 3 else 1
    pixel_format = image.GetPixelFormat()
    _check_single_slice(int(pixel_format.GetSamplesPerPixel()), int(frames))
    buffer = image.GetBuffer()
    if buffer is None:
        raise RuntimeError("GDCM cannot decode the pixel data")
    raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
    kind = pixel_format.GetScalarTypeAsString()
    if kind not in _GDCM_DTYPES:
        raise RuntimeError(f"GDCM pixel type {kind} is not supported")
    rows, columns = image.GetDimension(1), image.GetDimension(0)
    dtype = np.dtype(_GDCM_DTYPES[kind]).newbyteorder("=")  # GDCM hands out host byte order
    if len(raw) != rows * columns * dtype.itemsize:
        raise RuntimeError(f"GDCM returned {len(raw)} bytes for {rows}x{columns} {kind}")
    array = np.frombuffer(raw, dtype=dtype).reshape(rows, columns)
    return _rescale(_as_image(array, None), image.GetSlope(), image.GetIntercept())


def _with_simpleitk(path: Path) -> NDArray[np.float32]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))  # ITK's GDCM reader applies RescaleSlope/Intercept itself
    _check_single_slice(int(image.GetNumberOfComponentsPerPixel()),
                        int(image.GetDepth()) if image.GetDimension() == 3 else 1)
    return _as_image(sitk.GetArrayFromImage(image), None)


_FALLBACKS = (("GDCM", _with_gdcm), ("SimpleITK", _with_simpleitk))


def decode_slice(path: PathLike) -> NDArray[np.float32]:
    """The pixels of one DICOM file as a native-endian float32 ``(Rows, Columns)`` image.

    Raises :class:`SliceDecodeError` (naming the file and every decoder's reason) when
    neither pydicom's plugins nor the GDCM/SimpleITK fallbacks can decode it.
    """
    path = Path(path)
    reasons: list[str] = []
    for name, decoder in (("pydicom", _with_pydicom), *_FALLBACKS):
        try:
            image = decoder(path)
        except _Refused as refusal:
            raise SliceDecodeError(path, str(refusal)) from None
        except ImportError as error:
            reasons.append(f"{name}: not installed ({error})")
            continue
        except Exception as error:  # decoders raise many kinds for broken or exotic files
            reasons.append(f"{name}: {_error_text(error)}")
            log.debug("%s: %s failed: %s", path, name, reasons[-1])
            continue
        if reasons:
            log.warning("%s: decoded by %s after %s", path, name, "; ".join(reasons))
        return image
    raise SliceDecodeError(path, "cannot decode pixel data; " + "; ".join(reasons))


def decode_slices(paths: Sequence[PathLike]) -> DecodedSlices:
    """Every file of ``paths`` decoded, in order; one that fails is ``None`` with its reason."""
    images: list[NDArray[np.float32] | None] = []
    errors: list[str | None] = []
    for path in paths:
        try:
            images.append(decode_slice(path))
            errors.append(None)
        except SliceDecodeError as error:
            log.warning("slice lost: %s", error)
            images.append(None)
            errors.append(error.reason)
    return DecodedSlices(images, errors)


def describe_lost(paths: Sequence[PathLike], decoded: DecodedSlices, limit: int = 3,
                  max_chars: int = 500) -> str | None:
    """``"2 of 17 slices could not be decoded: 5.dcm: <reason>; 9.dcm: <reason>"``, or None
    when every slice decoded (at most ``limit`` files named, ``max_chars`` characters)."""
    lost = [(Path(p).name, e) for p, e in zip(paths, decoded.errors) if e is not None]
    if not lost:
        return None
    named = "; ".join(f"{name}: {reason}" for name, reason in lost[:limit])
    more = f"; and {len(lost) - limit} more" if len(lost) > limit else ""
    text = f"{len(lost)} of {len(paths)} slices could not be decoded: {named}{more}"
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."
