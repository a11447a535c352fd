"""What WADO and RAD-69 do to an instance besides handing it out: transcode and render.

Pure and blocking (pydicom/numpy/Pillow): the HTTP handlers run these in a worker thread.
Instances are served as stored whenever the client accepts that; transcoding is limited to
what is lossless and always possible here: any stored syntax to the uncompressed ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

EXPLICIT_LE = str(ExplicitVRLittleEndian)
IMPLICIT_LE = str(ImplicitVRLittleEndian)
UNCOMPRESSED_TARGETS = frozenset({EXPLICIT_LE, IMPLICIT_LE})
RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
MAX_RENDERED_SIDE = 8192  # a larger viewport would only make the server allocate gigabytes on request


class PixelError(Exception):
    """The instance cannot be given in the form asked for; ``reason`` is safe to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def can_supply(stored_ts: str, wanted_ts: str) -> bool:
    """Whether an instance stored in ``stored_ts`` can be sent in ``wanted_ts`` ('*' = as stored)."""
    return wanted_ts in ("*", stored_ts) or wanted_ts in UNCOMPRESSED_TARGETS


def transcode(data: bytes, wanted_ts: str) -> bytes:
    """The Part 10 object re-encoded in ``wanted_ts`` (Explicit or Implicit VR Little Endian)."""
    if wanted_ts not in UNCOMPRESSED_TARGETS:
        raise PixelError(f"cannot transcode to transfer syntax {wanted_ts}")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        source = UID(ds.file_meta.TransferSyntaxUID)
        if source == wanted_ts:
            return data
        if source.is_compressed:
            ds.decompress()
        elif not source.is_little_endian and "PixelData" in ds and int(ds.get("BitsAllocated", 8)) > 8:
            width = int(ds.BitsAllocated) // 8
            raw = np.frombuffer(ds.PixelData, dtype=f">u{width}")
            ds.PixelData = raw.astype(f"<u{width}").tobytes()
        ds.file_meta.TransferSyntaxUID = UID(wanted_ts)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True, little_endian=True,
                         implicit_vr=wanted_ts == IMPLICIT_LE)
        return buffer.getvalue()
    except PixelError:
        raise
    except Exception as exc:
        raise PixelError(f"cannot transcode this instance to {wanted_ts}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    quality: int = 90
    window_center: float | None = None
    window_width: float | None = None
    rows: int | None = None
    columns: int | None = None


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def render(data: bytes, frame: int, options: RenderOptions) -> bytes:
    """Frame ``frame`` (1-based) as a consumer image (JPEG or PNG), with the modality and VOI LUTs applied."""
    fmt = RENDERED_TYPES.get(options.media_type)
    if fmt is None:
        raise PixelError(f"cannot render as {options.media_type}: supported are {', '.join(RENDERED_TYPES)}")
    for side in (options.rows, options.columns):
        if side is not None and not 1 <= side <= MAX_RENDERED_SIDE:
            raise PixelError(f"rendered rows and columns must be between 1 and {MAX_RENDERED_SIDE}, not {side}")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise PixelError(f"the stored object cannot be read: {exc}") from None
    if "PixelData" not in ds:
        raise PixelError("the instance has no pixel data to render")
    frames = number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise PixelError(f"frame {frame} does not exist: the instance has {frames} frame(s)")
    try:
        arr = ds.pixel_array
        if frames > 1:
            arr = arr[frame - 1]
        image = _to_image(ds, arr, options)
    except PixelError:
        raise
    except Exception as exc:
        raise PixelError(f"the pixel data cannot be decoded: {exc}") from None
    if options.rows or options.columns:
        rows = options.rows or round(image.height * options.columns / image.width)
        columns = options.columns or round(image.width * options.rows / image.height)
        image = image.resize((min(MAX_RENDERED_SIDE, max(1, columns)), min(MAX_RENDERED_SIDE, max(1, rows))))
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=max(1, min(100, options.quality)))
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_image(ds: Dataset, arr: np.ndarray, options: RenderOptions) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return Image.fromarray(_scale_to_uint8(rgb, rgb.min(), rgb.max()), mode="RGB")
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if arr.dtype != np.uint8:
            arr = _scale_to_uint8(arr, 0, (1 << int(ds.get("BitsStored", 8))) - 1)
        return Image.fromarray(arr.astype(np.uint8), mode="RGB")
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if options.window_center is not None and options.window_width is not None:
        low = options.window_center - options.window_width / 2
        high = options.window_center + options.window_width / 2
    elif "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
        low, high = float(values.min()), float(values.max())
    else:
        low, high = float(values.min()), float(values.max())
    gray = _scale_to_uint8(values, low, high)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = values.astype(np.float64)
    span = float(high) - float(low)
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return (np.clip((values - low) / span, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def frame_count(data: bytes) -> int:
    return number_of_frames(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))


def native_frames(data: bytes, frames: list[int]) -> list[bytes]:
    """The uncompressed (little endian, interleaved as stored) bytes of each requested 1-based frame."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise PixelError("the instance has no pixel data")
        if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
            ds.decompress()
        elif not UID(ds.file_meta.TransferSyntaxUID).is_little_endian:
            raise PixelError("frames of big endian instances are not supported")
        total = number_of_frames(ds)
        frame_bytes = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                       * int(ds.BitsAllocated)) // 8
    except PixelError:
        raise
    except Exception as exc:
        raise PixelError(f"the pixel data cannot be decoded: {exc}") from None
    out = []
    for n in frames:
        if not 1 <= n <= total:
            raise PixelError(f"frame {n} does not exist: the instance has {total} frame(s)")
        out.append(bytes(ds.PixelData[(n - 1) * frame_bytes:n * frame_bytes]))
    return out
