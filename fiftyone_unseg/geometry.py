"""The geometry between an image and a SAM-layout model's square input, in one place."""

import dataclasses

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

BAND_PIXELS = 1 << 20  # large images are handled in bands of rows about this large
# Bands for the per-pixel arithmetic of composing and measuring: temporaries this small
# stay in the cache and in the allocator's heap (no page faults for fresh memory).
CACHE_BAND_PIXELS = 1 << 17
_CV_CHANNELS = 128  # the most channels OpenCV's Python resize takes


@dataclasses.dataclass(frozen=True)
class Frame:
    """The geometry between an HxW image and the generator's SxS input, in one place.

    To the model, SAM's preprocessing: resize so the long side is S
    (``ResizeLongestSide.get_preprocess_shape``; bilinear, antialiased, as its
    ``apply_image_torch``, which in segment-anything 1.0 reads the size from the
    wrong dimensions of a BxCxHxW tensor), zero-pad bottom/right to SxS. This is
    padding to a max(H, W) square and resizing to S, up to rounding of the short
    side. Back, SAM's ``Sam.postprocess_masks``: upsample to SxS, crop the image
    region, resize to HxW, its exact inverse.
    """

    height: int
    width: int
    size: int

    def region(self, size: int | None = None) -> tuple[int, int]:
        """(h, w) of the image inside the padded NxN frame (N = ``size`` or S); at least one
        pixel each, however thin the image."""
        h, w = ResizeLongestSide.get_preprocess_shape(self.height, self.width, size or self.size)
        return max(1, h), max(1, w)

    def to_model(self, image: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """CxHxW -> CxNxN (N = ``size`` or S): long side resized to N, padded bottom/right."""
        n = size or self.size
        h, w = self.region(n)
        resized = F.interpolate(
            image[None], (h, w), mode="bilinear", align_corners=False, antialias=True
        )
        return F.pad(resized[0], (0, n - w, 0, n - h))

    def prompt(self, segments: np.ndarray) -> torch.Tensor:
        """HxW bool mask or integer segment map (0: background) -> 1x(S/4)x(S/4) in {0, 1}:
        the mask at the mask-prompt resolution (cells at least half covered), plus, for
        each segment that would be left out, its most covered cell: however small a
        segment is, it is in the prompt."""
        n = self.size // 4
        covered = self.to_model(torch.from_numpy(segments > 0)[None].to(torch.float32), n)[0]
        cells = covered > 0.5
        if segments.dtype == bool:
            if cells.any() or not segments.any():  # one segment, in its prompt (or none)
                return cells[None].to(torch.float32)
            segments = segments.view(np.uint8)
        h, w = self.region(n)
        rows = np.minimum((np.arange(self.height) + 0.5) * h / self.height, h - 1).astype(int)
        cols = np.minimum((np.arange(self.width) + 0.5) * w / self.width, w - 1).astype(int)
        on = cells.numpy()
        bands = row_bands(self.height, self.width)  # no more full-size arrays
        inside = np.zeros(int(segments.max()) + 1, bool)  # segments with a cell on
        for band in bands:
            inside[segments[band][on[rows[band]][:, cols]]] = True
        inside[0] = False
        keys = []  # segment * N * N + cell, for each pixel of a segment left out
        for band in bands:
            y, x = np.nonzero(inside[segments[band]] != (segments[band] > 0))
            segment = segments[band][y, x].astype(np.int64)
            keys.append(segment * n * n + rows[band][y] * n + cols[x])
        found, counts = np.unique(np.concatenate(keys), return_counts=True)
        if len(found):
            owner = found // (n * n)
            best = np.lexsort((-counts, owner))  # per segment, its most covered cell first
            first = np.r_[True, owner[best][1:] != owner[best][:-1]]
            cells.view(-1)[torch.from_numpy(found[best][first] % (n * n))] = True
        return cells[None].to(torch.float32)

    def from_model(self, noise: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """CxNxN in the padded model frame (any N, e.g. the generator's S/4) -> CxHxW, or
        only the output ``rows`` of it (Cx(rows)xW: large images are done in bands, so the
        full-resolution result never has to exist at once). Float32, a channels-last view."""
        return self.from_region(self.region_of(noise), rows)

    def region_of(self, noise: torch.Tensor) -> np.ndarray:
        """CxNxN in the padded model frame -> the image's region of it upsampled to SxS,
        hxwxC float32 (what :meth:`from_region` resizes to the image, band by band)."""
        hwc = noise.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()
        h, w = self.region()
        return _resize(hwc, self.size, self.size)[:h, :w]

    def from_region(self, region: np.ndarray, rows: slice | None = None) -> torch.Tensor:
        """:meth:`region_of`'s hxwxC -> CxHxW, or its output ``rows``: SAM's
        ``postprocess_masks``, torch's bilinear resize (``align_corners=False``) computed by
        OpenCV's, the same values to float rounding, about 25x as fast channels-last."""
        low, high, frac = _bilinear_taps(len(region), self.height, rows or slice(0, self.height))
        lower = region[low.numpy()]
        band = lower + (region[high.numpy()] - lower) * frac.numpy()[:, None, None]
        # Across, the same resize; down, the band keeps its rows as they are.
        return torch.from_numpy(_resize(band, band.shape[0], self.width)).permute(2, 0, 1)


def _resize(hwc: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWxC float32 -> height x width x C, bilinear with half-pixel centres (torch's
    ``align_corners=False``, no antialiasing), OpenCV's, at most 128 channels at a time."""
    parts = [
        cv2.resize(
            np.ascontiguousarray(hwc[..., c : c + _CV_CHANNELS]),
            (width, height),
            interpolation=cv2.INTER_LINEAR,
        ).reshape(height, width, -1)
        for c in range(0, max(hwc.shape[2], 1), _CV_CHANNELS)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def row_bands(height: int, width: int, pixels: int = BAND_PIXELS) -> list[slice]:
    """Row slices covering ``height`` rows of ``width`` pixels, about ``pixels`` pixels
    each; none shorter than 16 rows unless the image is."""
    step = max(16, pixels // max(width, 1))
    edges = [*range(0, height, step), height]
    if len(edges) > 2 and edges[-1] - edges[-2] < 16:
        del edges[-2]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


def _bilinear_taps(size_in: int, size_out: int, rows: slice):
    """The output ``rows`` of torch's bilinear resize (``align_corners=False``) from
    ``size_in`` to ``size_out``: each one's two input indices and the second one's weight."""
    out = torch.arange(rows.start, rows.stop, dtype=torch.float64)
    src = ((out + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, (src - low).to(torch.float32)


def box_crops(
    boxes: torch.Tensor,
    size: int,
    context: torch.Tensor | float,
    shift: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Square views of an SxS frame centred on boxes, as affine maps for ``F.affine_grid``.

    boxes: Nx4 xyxy in frame pixels; context: the crop side as a multiple of each box's
    long side (N or one float); shift: Nx2 offsets of the centre in crop sides; flips:
    N bool, mirror those crops left-right. Returns theta Nx2x3 mapping crop coordinates
    to frame coordinates (both normalised to [-1, 1]).
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    side = torch.as_tensor(context, dtype=torch.float32) * wh.amax(1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    if shift is not None:
        centre = centre + shift * side[:, None]
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0] = side / size
    theta[:, 1, 1] = side / size
    if flips is not None:
        theta[:, 0, 0] = torch.where(flips, -theta[:, 0, 0], theta[:, 0, 0])
    theta[:, :, 2] = 2 * centre / size - 1
    return theta


def crop(frames: torch.Tensor, theta: torch.Tensor, side: int) -> torch.Tensor:
    """NxCxSxS frames -> NxCx(side)x(side) views ``theta`` (bilinear; zeros outside)."""
    grid = F.affine_grid(theta, [len(frames), frames.shape[1], side, side], align_corners=False)
    return F.grid_sample(frames, grid, align_corners=False)


def uncrop(crops: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """The inverse of :func:`crop`: NxCxAxA views -> NxCxSxS frames (zeros outside the
    views)."""
    linear = theta[:, :, :2].inverse()
    inverse = torch.cat([linear, -linear @ theta[:, :, 2:]], 2)
    return crop(crops, inverse, size)


def boxes_in_crops(boxes: torch.Tensor, theta: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """Nx4 xyxy boxes in frame pixels -> the same boxes in pixels of their ``side``-pixel
    views ``theta`` (mirrored views keep x0 < x1)."""
    corners = boxes.view(-1, 2, 2) * (2 / size) - 1  # N x corner x (x, y), normalised
    scale, offset = theta[:, :, :2].diagonal(dim1=1, dim2=2), theta[:, :, 2]
    in_view = (corners - offset[:, None]) / scale[:, None]
    pixels = (in_view + 1) * (side / 2)
    return torch.cat([pixels.amin(1), pixels.amax(1)], 1)
