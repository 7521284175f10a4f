"""Pasting mask probabilities from the box frame into full-size images, many masks per call.

Shapes: N images, D_i detections of image i (D in all), M the mask side (e.g. 28), S = M + 2 (the mask with a
1 px zero border), H_i x W_i image i, c masks and hc x wc the padded region of one chunk.

What lands where is torchvision's `paste_masks_in_image(masks, boxes, (H, W))` (padding 1), pixel for pixel:
- the mask gets a 1 px zero border (S x S) and the box grows about its centre by S / M, in the boxes' dtype;
- the grown corners are truncated toward zero to integers (x0, y0, x1, y1) and the box covers w = x1 - x0 + 1
  by h = y1 - y0 + 1 pixels (at least 1) from (x0, y0);
- the S x S mask is stretched onto h x w bilinearly with half-pixel centres (F.interpolate, align_corners=False)
  and the part inside the image is written; the rest of the image is 0.
The values equal torchvision's up to rounding (a few float32 ulp): the same weights (see `_taps`), but every
product rounded on its own, where torch's compiled kernels fuse some multiply-adds (which ones depends on the
build and the code path). So the CPU and CUDA paths here agree bitwise.

torchvision allocates, fills and stacks a full H x W image per mask, a dozen small tensor ops per mask. Here only
each box's part inside its image is interpolated, for the masks of all images at once (in chunks), then copied
into the zeroed outputs. A box wholly outside its image gives an all-zero mask (torchvision raises for some).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Bounds a chunk's padded region (c x hc x wc elements): the temporaries are a few float copies of it and an int64
# one (on the GPU), ~100 MB at 2**22, whatever the number of detections and the image size.
CHUNK_ELEMENTS = 2**22
# Padding a small mask to a chunk's larger region costs ~10 elementwise passes over the padding; another chunk
# costs ~25 more tensor ops, each of which can wait a scheduler slice for a busy core (OpenMP) on a loaded CPU.
# A chunk takes a mask while its padded size stays within twice its useful pixels plus this allowance.
PADDING_ALLOWANCE = 2**18
# Columns of the Int64[D, 11] region table (see _regions).
Y0, X0, H, W, YA, XA, HR, WR, IMAGE_H, IMAGE_W, OFFSET = range(11)


def paste_masks(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], chunk_elements: int = CHUNK_ELEMENTS
) -> Tensor:
    """masks [D, 1, M, M] probabilities in the box frame, boxes [D, 4] xyxy in the image's pixels, image_size
    (H, W) -> [D, 1, H, W] in the masks' dtype, on their device.

    chunk_elements: the most region pixels (each mask padded to its chunk's largest region) interpolated at once.
    """
    return paste_masks_in_images([masks], [boxes], [image_size], chunk_elements)[0]


def paste_masks_in_images(
    masks: list[Tensor],
    boxes: list[Tensor],
    image_sizes: list[tuple[int, int]],
    chunk_elements: int = CHUNK_ELEMENTS,
) -> list[Tensor]:
    """N images' masks [D_i, 1, M, M], boxes [D_i, 4] and sizes (H_i, W_i) -> N tensors [D_i, 1, H_i, W_i]:
    `paste_masks` of each image, with the tensor ops of all images done together (on a loaded CPU the number of
    ops, not the pixels, sets the time). On CUDA the N results are views of one buffer."""
    if not len(masks) == len(boxes) == len(image_sizes):
        raise ValueError(f"paste_masks_in_images: {len(masks)} masks, {len(boxes)} boxes, {len(image_sizes)} sizes")
    if not masks:
        return []
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    counts = [len(m) for m in masks]
    for m, b in zip(masks, boxes, strict=True):
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != m.shape[3] or b.shape != (len(m), 4):
            raise ValueError(f"paste_masks takes masks [D, 1, M, M] and boxes [D, 4], got {m.shape} and {b.shape}")
    first = masks[0]
    if first.is_cuda:
        # One buffer and one element more: a chunk's padding is scattered to the last element (see _scatter).
        numels = [d * h * w for d, (h, w) in zip(counts, sizes, strict=True)]
        flat = first.new_zeros(sum(numels) + 1)
        parts = flat[:-1].split(numels)
        images = [part.view(d, 1, h, w) for part, d, (h, w) in zip(parts, counts, sizes, strict=True)]
    else:
        images = [first.new_zeros(d, 1, h, w) for d, (h, w) in zip(counts, sizes, strict=True)]
    if sum(counts) == 0:
        return images

    all_masks, all_boxes = torch.cat(masks), torch.cat(boxes)
    padded = F.pad(all_masks[:, 0].to(torch.promote_types(first.dtype, torch.float32)), (1, 1, 1, 1))  # [D, S, S]
    regions = _regions(all_boxes, padded.shape[-1] - 2, counts, sizes)  # Int64[D, 11]
    listed = regions.tolist()  # the one device sync
    image_of = [i for i, d in enumerate(counts) for _ in range(d)]
    row_of = [k for d in counts for k in range(d)]
    for members, hc, wc in _chunks(listed, chunk_elements):
        index = torch.tensor(members, device=first.device)
        values = _interpolate(padded[index], regions[index], hc, wc).to(first.dtype)  # [c, hc, wc]
        if first.is_cuda:
            _scatter(flat, values, regions[index])
        else:
            # A slice copy per mask costs about as little as zeroing the output; a scatter through an int64 index
            # of every region pixel costs 3x more on the CPU. On the GPU one scatter beats c small launches.
            for k, i in enumerate(members):
                ya, xa, hr, wr = listed[i][YA : WR + 1]
                images[image_of[i]][row_of[i], 0, ya : ya + hr, xa : xa + wr] = values[k, :hr, :wr]
    return images


def _regions(boxes: Tensor, mask_side: int, counts: list[int], sizes: list[tuple[int, int]]) -> Tensor:
    """boxes [D, 4] of images with counts[i] boxes of size sizes[i] -> Int64[D, 11], by column:
    Y0, X0, H, W: the box grown by (M + 2) / M about its centre (the border that the padding adds to the mask),
        corners truncated toward zero, sides of at least 1 px;
    YA, XA, HR, WR: its part inside the image, rows YA to YA + HR and columns XA to XA + WR (HR or WR 0: none);
    IMAGE_H, IMAGE_W: its image's size; OFFSET: where its mask starts in the images' flat buffer (CUDA)."""
    scale = (mask_side + 2) / mask_side
    # The same operations in the same order and dtype as torchvision, so that the truncation lands alike.
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    low, high = (centre - half).to(torch.int64).flip(1), (centre + half).to(torch.int64).flip(1)  # (y, x)
    size = (high - low + 1).clamp(min=1)
    limits, offsets, offset = [], [], 0  # per detection, built on the host: one copy to the device
    for d, (h, w) in zip(counts, sizes, strict=True):
        limits += [(h, w)] * d
        offsets += range(offset, offset + d * h * w, h * w)
        offset += d * h * w
    limit = torch.tensor(limits, device=boxes.device).view(-1, 2)
    start = low.clamp(min=0)
    inside = (torch.minimum(low + size, limit) - start).clamp(min=0)
    offsets = torch.tensor(offsets, dtype=torch.int64, device=boxes.device)[:, None]
    return torch.cat([low, size, start, inside, limit, offsets], dim=1)


def _chunks(regions: list[list[int]], chunk_elements: int) -> list[tuple[list[int], int, int]]:
    """-> (the masks, hc, wc) per chunk: the masks with a non-empty region, by falling region area, grouped while
    the chunk's padded size (count x hc x wc) stays within chunk_elements (a region larger than that is a chunk
    alone) and within twice its useful pixels plus PADDING_ALLOWANCE: one large box does not pad 99 small ones
    to its size."""
    area = [r[HR] * r[WR] for r in regions]
    order = sorted((i for i in range(len(regions)) if area[i] > 0), key=lambda i: area[i], reverse=True)
    chunks, members, hc, wc, useful = [], [], 0, 0, 0
    for i in order:
        grown_h, grown_w = max(hc, regions[i][HR]), max(wc, regions[i][WR])
        padded = (len(members) + 1) * grown_h * grown_w
        if members and (padded > chunk_elements or padded > 2 * (useful + area[i]) + PADDING_ALLOWANCE):
            chunks.append((members, hc, wc))
            members, useful, grown_h, grown_w = [], 0, regions[i][HR], regions[i][WR]
        members.append(i)
        hc, wc, useful = grown_h, grown_w, useful + area[i]
    if members:
        chunks.append((members, hc, wc))
    return chunks


def _taps(first: Tensor, length: int, size: Tensor, side: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The bilinear taps of c boxes along both axes: output pixels first + [0, length) of an axis of `size` px
    stretched from `side` px. first, size Int64[c, 2] (y, x) -> i0, i1 Int64[c, 2, length] and their weights
    l0, l1 [c, 2, length] in dtype.

    F.interpolate's rule (align_corners=False): source = side / size * (j + 0.5) - 0.5, clamped at 0; i0 its
    floor (at most side - 1), i1 the next sample (i0 at the last one), l1 = source - i0, l0 = 1 - l1.
    """
    j = first[:, :, None] + torch.arange(length, device=first.device)
    # tensor / tensor: one rounding, as F.interpolate's float division (int / tensor would take a reciprocal).
    ratio = torch.full_like(size, side, dtype=dtype) / size.to(dtype)
    # The rest in float64 and rounded once: for float32 that is the fused multiply-add that torch's CPU (AVX2,
    # AVX-512) and CUDA kernels compile this expression to; rounding twice moves the weights by up to ~1e-6.
    source = (ratio[:, :, None].double() * (j.double() + 0.5) - 0.5).to(dtype).clamp_(min=0)
    i0 = source.to(torch.int64).clamp_(max=side - 1)  # truncation is the floor here: source >= 0
    l1 = (source - i0.to(dtype)).clamp_(0, 1)
    i1 = i0 + (i0 < side - 1).to(torch.int64)
    return i0, i1, 1 - l1, l1


def _interpolate(padded: Tensor, regions: Tensor, hc: int, wc: int) -> Tensor:
    """padded [c, S, S], regions Int64[c, 11] (see _regions) -> [c, hc, wc]: each mask stretched onto its box,
    over the box's part inside the image (valid up to its HR x WR; beyond that, padding)."""
    count, side = padded.shape[0], padded.shape[-1]
    first = regions[:, YA : XA + 1] - regions[:, Y0 : X0 + 1]
    i0, i1, l0, l1 = _taps(first, max(hc, wc), regions[:, H : W + 1], side, padded.dtype)
    # Separable, in F.interpolate's order: each source row along x first ...
    xi0, xi1 = (i[:, 1, None, :wc].expand(count, side, wc) for i in (i0, i1))
    rows = padded.gather(2, xi0) * l0[:, 1, None, :wc] + padded.gather(2, xi1) * l1[:, 1, None, :wc]  # [c, S, wc]
    # ... then those rows along y, as whole-row copies: [c * hc, wc].
    rows = rows.view(count * side, wc)
    base = torch.arange(0, count * side, side, device=padded.device)[:, None]
    top = rows.index_select(0, (base + i0[:, 0, :hc]).view(-1)).mul_(l0[:, 0, :hc].reshape(-1, 1))
    bottom = rows.index_select(0, (base + i1[:, 0, :hc]).view(-1)).mul_(l1[:, 0, :hc].reshape(-1, 1))
    return top.add_(bottom).view(count, hc, wc)


def _scatter(flat: Tensor, values: Tensor, regions: Tensor) -> None:
    """Writes values [c, hc, wc] into the images' flat buffer at each mask's region inside its image; the
    positions past a mask's own HR x WR (the chunk's padding) all go to the buffer's last element, no image's."""
    count, hc, wc = values.shape
    a = torch.arange(hc, device=flat.device)
    b = torch.arange(wc, device=flat.device)
    row = regions[:, OFFSET, None] + (regions[:, YA, None] + a) * regions[:, IMAGE_W, None]  # [c, hc]
    index = row[:, :, None] + (regions[:, XA, None] + b)[:, None]  # [c, hc, wc]
    inside = (a < regions[:, HR, None])[:, :, None] & (b < regions[:, WR, None])[:, None]
    flat.scatter_(0, torch.where(inside, index, flat.numel() - 1).view(-1), values.reshape(-1))
