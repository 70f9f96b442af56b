#!/usr/bin/python3
"""Synthetic microscopy with ground truth, for training, testing and demos.

Two kinds of stacks, both written as ImageJ-compatible multi-page TIFFs (one page per
frame) with an instance-mask stack of the same shape beside them:

  nuclei  fluorescent nuclei, 16-bit: touching nuclei of varied size, shape and
          brightness with chromatin texture, blurred by a Gaussian PSF, on an uneven
          background with out-of-focus haze, imaged with Poisson (shot) noise, camera
          offset and Gaussian read noise.  Mask: one id per nucleus (uint16, 0 =
          background); touching nuclei share a boundary but keep their own ids.
  em      EM-like membrane texture, 8-bit: warped Voronoi cells separated by dark
          membranes of varying thickness, textured interiors with dark organelles,
          blur and Gaussian noise.  Mask: one id per 4-connected cell interior (uint16,
          0 = membrane) -- or, with --mask-format binary, the ISBI 2012 layout
          (uint8, 255 = cell interior, 0 = membrane).

Every frame is drawn from its own generator seeded with (seed, frame index), so frame
k is the same whatever --frames is, and a different --seed gives data no model has
trained on.  Numbers below (sizes, intensities, noise) are chosen to look like a
20x-40x widefield nuclear stain (DAPI/Hoechst on an sCMOS camera) and like ssTEM of
neural tissue (the ISBI 2012 stacks) respectively.

  /usr/bin/python3 samples/synth.py --kind nuclei --frames 16 --size 512x512 --seed 1 \\
      --out-image nuclei.tif --out-mask nuclei-masks.tif
"""

import argparse
import sys

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
import tifffile


def smooth_field(rng, shape, cells):
    """Zero-mean, unit-std random field varying on a scale of shape/cells (bicubic)."""
    h, w = shape
    cells = max(2, cells)
    coarse = rng.standard_normal((cells, cells))
    field = ndimage.zoom(coarse, (h / cells, w / cells), order=3, mode="mirror")[:h, :w]
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


# --------------------------------------------------------------------------- nuclei --

def nuclei_frame(rng, width, height):
    """One frame of nuclei: (uint16 image, uint16 instance mask)."""
    shape = (height, width)
    labels = np.zeros(shape, np.uint16)
    best = np.full(shape, np.inf, np.float32)   # normalised radius of the owner
    # Mean radius 13 px (10 um nuclei at ~0.75 um/px); about 25 % of the area covered.
    n_target = max(1, int(0.25 * width * height / (np.pi * 13.0 ** 2)))
    centres = []
    radii = []
    for _ in range(n_target * 3):
        if len(centres) >= n_target:
            break
        r = float(np.clip(rng.lognormal(np.log(13.0), 0.25), 6.0, 28.0))
        if centres and rng.random() < 0.35:
            # touching cluster: next to an existing nucleus, slightly overlapping
            j = rng.integers(len(centres))
            ang = rng.uniform(0, 2 * np.pi)
            d = (radii[j] + r) * rng.uniform(0.8, 0.95)
            c = (centres[j][0] + d * np.sin(ang), centres[j][1] + d * np.cos(ang))
        else:
            c = (rng.uniform(-r / 2, height + r / 2), rng.uniform(-r / 2, width + r / 2))
        # reject nuclei that would hide most of another one
        if any(np.hypot(c[0] - cc[0], c[1] - cc[1]) < 0.7 * (r + rr)
               for cc, rr in zip(centres, radii)):
            continue
        centres.append(c)
        radii.append(r)

    n = len(centres)
    brightness = np.zeros(n + 1, np.float32)
    # log-normal brightness: a few dim (G1, out of focus) and bright (mitotic) nuclei
    brightness[1:] = rng.lognormal(0.0, 0.35, n)
    rn_best = best
    for i, ((cy, cx), r) in enumerate(zip(centres, radii), start=1):
        aspect = rng.uniform(1.0, 1.8)
        a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
        theta = rng.uniform(0, np.pi)
        # radial jitter: low harmonics of the outline, smaller for higher orders
        ks = np.arange(2, 6)
        eps = rng.normal(0.0, 0.05 / (ks - 1))
        psi = rng.uniform(0, 2 * np.pi, ks.size)
        ext = int(np.ceil(a * (1 + np.abs(eps).sum()))) + 2
        y0, y1 = max(0, int(cy) - ext), min(height, int(cy) + ext + 1)
        x0, x1 = max(0, int(cx) - ext), min(width, int(cx) + ext + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        phi = np.arctan2(dy, dx) - theta
        rho = np.hypot(dy, dx)
        # ellipse radius in direction phi, times the jitter
        rad = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
        rad = rad * (1.0 + (eps[:, None, None] * np.cos(ks[:, None, None] * phi + psi[:, None, None])).sum(0))
        rn = rho / rad
        sub_best = rn_best[y0:y1, x0:x1]
        own = (rn < 1.0) & (rn < sub_best)
        sub_best[own] = rn[own]
        labels[y0:y1, x0:x1][own] = i

    # drop ids that ended up with no (or only a sliver of) pixels, renumber 1..k
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = counts >= 12
    keep[0] = False
    remap = np.zeros(n + 1, np.uint16)
    remap[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint16)
    bright_kept = brightness[keep]
    labels = remap[labels]

    # chromatin texture at a 3-6 px scale, and a slightly domed profile
    texture = 1.0 + 0.18 * smooth_field(rng, shape, max(4, min(width, height) // 6))
    dome = 1.0 - 0.3 * np.clip(rn_best, 0, 1) ** 2
    bvals = np.concatenate([[0.0], bright_kept]).astype(np.float32)
    signal = np.where(labels > 0, bvals[labels] * dome * texture, 0.0).astype(np.float32)

    psf_sigma = rng.uniform(1.2, 2.0)       # widefield PSF, ~1.5 px at 0.75 um/px
    blurred = ndimage.gaussian_filter(signal, psf_sigma)
    haze = 0.12 * ndimage.gaussian_filter(signal, 12.0)   # out-of-focus light
    # uneven illumination / autofluorescence: +-40 % around a low level, plus a tilt
    bg = 0.08 * (1.0 + 0.4 * np.tanh(smooth_field(rng, shape, 3)))
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.normal(0, 0.03) * gx / max(width, 1) + rng.normal(0, 0.03) * gy / max(height, 1)
    expected = np.clip(blurred + haze + bg + tilt, 0.0, None)

    photons_per_unit = rng.uniform(1200.0, 2000.0)   # illumination varies frame to frame
    photons = rng.poisson(expected * photons_per_unit).astype(np.float32)
    gain, offset, read_noise = 2.0, 100.0, 4.0       # sCMOS-like ADU/e-, offset, e- rms
    adu = photons * gain + offset + rng.normal(0.0, read_noise * gain, shape)
    image = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    return image, labels


# ------------------------------------------------------------------------------ em --

def em_frame(rng, width, height):
    """One frame of EM-like membranes: (uint8 image, uint16 cell-instance mask)."""
    shape = (height, width)
    spacing = 40.0      # mean cell diameter, px (ISBI 2012 neurites: 20-80 px)
    gy = np.arange(-spacing, height + spacing, spacing)
    gx = np.arange(-spacing, width + spacing, spacing)
    py, px = np.meshgrid(gy, gx, indexing="ij")
    pts = np.stack([py.ravel(), px.ravel()], 1)
    pts += rng.uniform(-0.45, 0.45, pts.shape) * spacing
    extra = rng.uniform([-spacing, -spacing], [height + spacing, width + spacing],
                        (pts.shape[0] // 4, 2))       # some small cells in between
    pts = np.concatenate([pts, extra])

    # warp the sampling grid so membranes curve instead of being straight bisectors
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    coarse_cells = max(2, min(width, height) // 64)
    fine_cells = max(2, min(width, height) // 16)
    wy = 7.0 * smooth_field(rng, shape, coarse_cells) + 1.5 * smooth_field(rng, shape, fine_cells)
    wx = 7.0 * smooth_field(rng, shape, coarse_cells) + 1.5 * smooth_field(rng, shape, fine_cells)
    coords = np.stack([(yy + wy).ravel(), (xx + wx).ravel()], 1)
    _, owner = cKDTree(pts).query(coords, k=1)
    cell = owner.reshape(shape).astype(np.int32)

    # membrane: every pixel with a 4-neighbour in another cell (a 2-px band), thickened
    # to 3-4 px where a smooth thickness field is high
    edge = np.zeros(shape, bool)
    edge[:-1, :] |= cell[:-1, :] != cell[1:, :]
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    edge[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    thick = smooth_field(rng, shape, max(2, min(width, height) // 48)) > 0.3
    membrane = edge | (ndimage.binary_dilation(edge) & thick)

    # interiors: one grey level per cell, fine + coarse texture
    ncell = pts.shape[0]
    cell_grey = rng.uniform(150.0, 205.0, ncell).astype(np.float32)
    img = cell_grey[cell]
    noise = rng.standard_normal(shape).astype(np.float32)
    img += 10.0 * ndimage.gaussian_filter(noise, 1.0) / 0.28   # 0.28: std after sigma 1
    img += 8.0 * smooth_field(rng, shape, max(2, min(width, height) // 8))

    # organelles: dark ellipses (mitochondria) and dots (vesicles) inside cells
    n_org = int(width * height / 2500)
    oy = rng.uniform(0, height, n_org)
    ox = rng.uniform(0, width, n_org)
    for cy, cx in zip(oy, ox):
        a, b = rng.uniform(2.0, 7.0), rng.uniform(1.5, 3.0)
        th = rng.uniform(0, np.pi)
        y0, y1 = max(0, int(cy - a - 1)), min(height, int(cy + a + 2))
        x0, x1 = max(0, int(cx - a - 1)), min(width, int(cx + a + 2))
        sy, sx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = sx * np.cos(th) + sy * np.sin(th)
        v = -sx * np.sin(th) + sy * np.cos(th)
        inside = (u / a) ** 2 + (v / b) ** 2 < 1.0
        img[y0:y1, x0:x1][inside] -= rng.uniform(35.0, 70.0)

    memb_grey = 45.0 + 15.0 * smooth_field(rng, shape, max(2, min(width, height) // 32))
    img = np.where(membrane, memb_grey, img)
    img = ndimage.gaussian_filter(img, rng.uniform(0.7, 1.1))   # section thickness/PSF
    img += rng.normal(0.0, 9.0, shape)                            # detector noise
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # ground truth: 4-connected cell interiors (what the ISBI Rand error compares)
    labels, _ = ndimage.label(~membrane, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    return image, labels.astype(np.uint16)


GENERATORS = {"nuclei": nuclei_frame, "em": em_frame}


def generate(kind, frames, width, height, seed):
    """Returns (image stack (F,H,W), instance-mask stack (F,H,W) uint16)."""
    gen = GENERATORS[kind]
    imgs, masks = [], []
    for k in range(frames):
        rng = np.random.default_rng([seed, k])
        img, mask = gen(rng, width, height)
        imgs.append(img)
        masks.append(mask)
    return np.stack(imgs), np.stack(masks)


def write_stack(path, stack):
    # ImageJ hyperstack layout, uncompressed: Fiji opens it as a stack, and every
    # reader (libtiff, tiffstacksrc, tifffile) streams it page by page
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})


def parse_size(text):
    try:
        w, h = text.lower().split("x")
        w, h = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x512, not {text!r}")
    if not (8 <= w <= 16384 and 8 <= h <= 16384):
        raise argparse.ArgumentTypeError("width and height must be between 8 and 16384")
    return w, h


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=sorted(GENERATORS), default="nuclei")
    ap.add_argument("--frames", type=int, default=16, help="number of frames (pages)")
    ap.add_argument("--size", type=parse_size, default=(512, 512), help="WxH (default 512x512)")
    ap.add_argument("--seed", type=int, default=1, help="frame k uses seed (SEED, k)")
    ap.add_argument("--out-image", required=True, help="image stack (.tif)")
    ap.add_argument("--out-mask", help="mask stack (.tif)")
    ap.add_argument("--mask-format", choices=["instances", "binary"], default="instances",
                    help="instances: uint16 ids, 0 = background/membrane; binary: uint8 "
                         "255 = object/cell interior, 0 = background/membrane (ISBI layout)")
    args = ap.parse_args(argv)
    if not 1 <= args.frames <= 100000:
        ap.error("--frames must be between 1 and 100000")
    if args.seed < 0:
        ap.error("--seed must be >= 0")

    images, masks = generate(args.kind, args.frames, args.size[0], args.size[1], args.seed)
    write_stack(args.out_image, images)
    if args.out_mask:
        if args.mask_format == "binary":
            masks = np.where(masks > 0, 255, 0).astype(np.uint8)
        write_stack(args.out_mask, masks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
