"""Shared by the NAS benchmarks: the class-balanced CIFAR-10 subsets they train and rank on."""


def cifar_subsets(path, train_images, eval_images):
    """A seeded class-balanced 10% of cifar10_train.npz is held out; from the rest ``train_images``
    and from the held-out part ``eval_images``, both class-balanced. Returns float/long tensors
    (train x, train y, held-out x, held-out y); no test image is used."""
    from slimkit.data import few_shot_indices, load_dataset

    splits = load_dataset(f"cifar10:{path}", seed=0, holdout="balanced", test_fraction=0.1)
    tx, ty = splits.train.tensors()
    vx, vy = splits.test.tensors()
    idx = few_shot_indices(ty, train_images // 10, 0)
    vidx = few_shot_indices(vy, eval_images // 10, 0)
    return tx[idx].float(), ty[idx].long(), vx[vidx].float(), vy[vidx].long()


def loo_scale_errors(block_ms, measured_ms):
    """Signed % error of ``scale * block sum`` on each network when ``scale`` is the median measured /
    block-sum ratio of the OTHER networks (a calibration never checked on the networks it was fit on)."""
    import statistics

    ratios = [m / b for b, m in zip(block_ms, measured_ms)]
    out = []
    for i, (b, m) in enumerate(zip(block_ms, measured_ms)):
        scale = statistics.median(ratios[:i] + ratios[i + 1:])
        out.append(100.0 * (scale * b - m) / m)
    return out
