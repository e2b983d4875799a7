"""Augmented views of a few images, shared by the recovery passes (BN recalibration, distillation, synthesis).

``random_views(x, gen, crop=True, flip=True)``: per image, a random shift of up to 1/8 of the size (zero-padded
crop; ``crop="resized"``: a random-resized crop instead) and a random horizontal flip. ``mix(x, gen, mode)``:
mixup or cutmix between images of the batch (a random partner each). Non-image inputs (not 4-D) pass through unchanged. ``flip_safe(teacher, x)`` decides whether
horizontal flips keep the data's meaning, by asking the teacher (digits and text change class when mirrored).
"""
import torch
import torch.nn.functional as F

MIX_MODES = ("none", "mixup", "cutmix", "both")


def random_views(x, gen, crop=True, flip=True):
    """``crop``: True/"shift" (zero-padded shift), "resized" (random-resized crop, see ``resized_crops``), or
    False/"none"."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if crop == "resized":
        return resized_crops(x, gen)
    if crop and crop != "none":
        ph, pw = max(1, h // 8), max(1, w // 8)
        padded = F.pad(x, (pw, pw, ph, ph))
        di = torch.randint(0, 2 * ph + 1, (n,), generator=gen)
        dj = torch.randint(0, 2 * pw + 1, (n,), generator=gen)
        rows = (di[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])
        x = padded.gather(2, rows)
        cols = (dj[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    return x


def resized_crops(x, gen, min_area=0.35, max_log_ratio=0.2877, max_area=1.0):
    """Per image, a random box of ``min_area``..1 of the area and aspect ratio exp(+-max_log_ratio) (3/4..4/3),
    resized back to the full size by bilinear sampling: the inception crop scaled down to small images, the
    stronger view that function matching uses (Beyer et al. 2022)."""
    n = len(x)
    area = min_area + (max_area - min_area) * torch.rand(n, generator=gen)
    ratio = torch.exp((2 * torch.rand(n, generator=gen) - 1) * max_log_ratio)
    sx = (area * ratio).sqrt().clamp(max=1.0)  # box width / image width
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (2 * torch.rand(n, generator=gen) - 1) * (1 - sx)  # box centre, in [-1, 1] coordinates
    ty = (2 * torch.rand(n, generator=gen) - 1) * (1 - sy)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mix(x, gen, mode="both", alpha=1.0):
    """Mix every image with a random partner of the batch: mixup (convex blend with lambda ~ Beta(alpha,
    alpha)), cutmix (a random box pasted from the partner) or, with ``both``, one of the two per batch."""
    if mode == "none" or x.dim() != 4 or len(x) < 2:
        return x
    if mode == "both":
        mode = "mixup" if torch.rand((), generator=gen) < 0.5 else "cutmix"
    partner = x[torch.randperm(len(x), generator=gen)]
    lam = _beta(len(x), alpha, gen)
    if mode == "mixup":
        lam = lam[:, None, None, None].to(x.dtype)
        return lam * x + (1 - lam) * partner
    h, w = x.shape[2:]
    cut = (1 - lam).sqrt()
    bh, bw = (cut * h).long(), (cut * w).long()
    ci = (torch.rand(len(x), generator=gen) * h).long()
    cj = (torch.rand(len(x), generator=gen) * w).long()
    i0, i1 = (ci - bh // 2).clamp(0, h), (ci + bh // 2).clamp(0, h)
    j0, j1 = (cj - bw // 2).clamp(0, w), (cj + bw // 2).clamp(0, w)
    ii, jj = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = (ii >= i0[:, None, None]) & (ii < i1[:, None, None]) & (jj >= j0[:, None, None]) & (jj < j1[:, None, None])
    return torch.where(box[:, None], partner, x)


def _beta(n, alpha, gen):
    """Beta(alpha, alpha) draws, reproducible from ``gen`` (torch's Beta sampler takes no generator)."""
    if alpha <= 0:
        return torch.full((n,), 0.5)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.distributions.Beta(float(alpha), float(alpha)).sample((n,))


def views(x, gen, crop=True, flip=True, mix_mode="none", alpha=1.0):
    return mix(random_views(x, gen, crop, flip), gen, mix_mode, alpha)


@torch.no_grad()
def flip_safe(teacher, x, threshold=0.8, batch=100):
    """True when the teacher's top-1 class survives a horizontal flip on at least ``threshold`` of ``x``
    (natural photos: ~90%; digits, text: far less)."""
    if x.dim() != 4:
        return False
    agree = total = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        agree += int((teacher(xb).argmax(1) == teacher(xb.flip(3)).argmax(1)).sum())
        total += len(xb)
    return agree >= threshold * total
