"""The geometry between an image and a SAM-layout model's square input, in one place."""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide


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
        """(h, w) of the image inside the padded NxN frame (N = ``size`` or S)."""
        return ResizeLongestSide.get_preprocess_shape(self.height, self.width, size or self.size)

    def to_model(self, image: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """CxHxW -> CxNxN (N = ``size`` or S): long side resized to N, padded bottom/right."""
        n = size or self.size
        h, w = self.region(n)
        resized = F.interpolate(
            image[None], (h, w), mode="bilinear", align_corners=False, antialias=True
        )
        return F.pad(resized[0], (0, n - w, 0, n - h))

    def prompt(self, mask: np.ndarray) -> torch.Tensor:
        """HxW bool -> 1x(S/4)x(S/4) in {0, 1}: the mask at the mask-prompt resolution."""
        resized = self.to_model(torch.from_numpy(mask)[None].to(torch.float32), self.size // 4)
        return (resized > 0.5).to(torch.float32)

    def from_model(self, noise: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """CxNxN in the padded model frame (any N, e.g. the generator's S/4) -> CxHxW, or
        only the output ``rows`` of it (Cx(rows)xW: large images are done in bands, so the
        full-resolution result never has to exist at once)."""
        full = F.interpolate(
            noise[None], (self.size, self.size), mode="bilinear", align_corners=False
        )
        h, w = self.region()
        crop = full[0, :, :h, :w]
        rows = rows or slice(0, self.height)
        across = _bilinear_weights(w, self.width, slice(0, self.width))  # W x w
        down = _bilinear_weights(h, self.height, rows)  # rows x h
        return torch.einsum("rh,chw,xw->crx", down, crop, across)


def _bilinear_weights(size_in: int, size_out: int, rows: slice) -> torch.Tensor:
    """The ``rows`` of the (size_out x size_in) matrix of torch's bilinear resize
    (``align_corners=False``), so that a resize is a product with it."""
    out = torch.arange(rows.start, rows.stop, dtype=torch.float64)
    src = ((out + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = (src - low).to(torch.float32)
    weights = torch.zeros(len(out), size_in)
    index = torch.arange(len(out))
    weights[index, low] += 1 - frac
    weights[index, high] += frac
    return weights
