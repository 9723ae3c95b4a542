"""AutoAugment as the authors train with it: the PIL ``CIFAR10Policy`` (25 sub-policies of the
AutoAugment paper) after crop and flip. The table below is typed in from the published policy,
and every operation is computed here with PIL, image by image, independently of our code."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from mpdagl_triton import augment
from mpdagl_triton.augment import ImageAugment, random_crop_flip

# (p1, op1, bin1, p2, op2, bin2), in the policy's order and its names
POLICY = [
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
]
RANGES = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": [0] * 10,
    "equalize": [0] * 10,
    "invert": [0] * 10,
}
RANDOM_SIGN = {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
FILL = (128, 128, 128)
OURS = {name: name[0].upper() + name[1:] for name in RANGES} | {"autocontrast": "AutoContrast"}


def rotate_with_fill(image, degrees):
    rotated = image.convert("RGBA").rotate(degrees)
    return Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert(image.mode)


PIL_OPS = {  # (image, signed magnitude) -> image, with PIL
    "shearX": lambda im, m: im.transform(im.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL),
    "shearY": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BICUBIC, fillcolor=FILL),
    "translateX": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, m * im.size[0], 0, 1, 0), fillcolor=FILL),
    "translateY": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, m * im.size[1]), fillcolor=FILL),
    "rotate": rotate_with_fill,
    "color": lambda im, m: ImageEnhance.Color(im).enhance(1 + m),
    "posterize": lambda im, m: ImageOps.posterize(im, int(m)),
    "solarize": lambda im, m: ImageOps.solarize(im, m),
    "contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m),
    "sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m),
    "brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m),
    "autocontrast": lambda im, m: ImageOps.autocontrast(im),
    "equalize": lambda im, m: ImageOps.equalize(im),
    "invert": lambda im, m: ImageOps.invert(im),
}

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else [])


def fixed_batch() -> np.ndarray:
    """48 RGB 32x32 images, uint8 [N, H, W, 3]: noise, smooth gradients and the edge cases of
    the histogram operations (a constant image, two values, a narrow range, a full range)."""
    rng = np.random.default_rng(2024)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, 32)
    for i in range(16):  # smooth, as natural images mostly are
        low, high = rng.integers(0, 256, 2)
        tint = rng.random(3)
        field = np.outer(ramp, ramp[::-1] if i % 2 else ramp)[..., None] * tint
        images[i] = np.clip(low + (high - low) * field + rng.normal(0, 4, (32, 32, 3)), 0, 255).astype(np.uint8)
    images[16] = 77
    images[17, ..., 0], images[17, ..., 1], images[17, ..., 2] = 5, 200, 255
    images[18] = rng.integers(100, 110, (32, 32, 3))
    images[19] = np.where(rng.random((32, 32, 1)) < 0.5, 0, 255)
    images[20, ..., :] = np.arange(32 * 32).reshape(32, 32, 1) % 256  # every value, four times
    return images


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def test_the_policy_table_is_the_published_one():
    assert len(augment.CIFAR10_POLICY) == len(POLICY) == 25
    for ours, (p1, op1, bin1, p2, op2, bin2) in zip(augment.CIFAR10_POLICY, POLICY):
        assert [tuple(step) for step in ours] == [(OURS[op1], p1, bin1), (OURS[op2], p2, bin2)]
    assert set(augment.MAGNITUDES) == {OURS[name] for name in RANGES}
    for name, magnitudes in RANGES.items():
        assert augment.MAGNITUDES[OURS[name]] == tuple(float(m) for m in magnitudes), name
    assert augment.SIGNED == {OURS[name] for name in RANDOM_SIGN}
    assert augment.FILL == 128


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(RANGES))
def test_each_operation_gives_pils_pixels(name, device):
    """Every magnitude bin, both signs where the policy draws one, on a fixed batch: the mean
    absolute pixel difference from PIL (0..255 scale) is measured, and it is 0. Our operations
    round where PIL rounds and compute in its precision (float32 blends and filter, double
    bicubic and AutoContrast table, fixed-point nearest-neighbour geometry), so any difference
    is a bug, not noise."""
    images = fixed_batch()
    x = as_tensor(images).to(device)
    residuals = {}
    for bin_ in range(10):
        for sign in ((1, -1) if name in RANDOM_SIGN else (1,)):
            m = sign * RANGES[name][bin_]
            expected = as_tensor(np.stack([np.asarray(PIL_OPS[name](Image.fromarray(im), m)) for im in images]))
            got = augment.apply_operation(OURS[name], x, torch.full((len(x),), float(m), dtype=torch.float64))
            assert got.device.type == device and got.dtype == torch.float32
            residuals[(bin_, sign)] = (got.cpu() - expected).abs().mean().item()
    assert max(residuals.values()) == 0, {k: v for k, v in residuals.items() if v}


def test_the_operations_take_a_magnitude_per_image():
    """One call, a different (signed) magnitude for each image: each as PIL computes it alone."""
    images = fixed_batch()[:20]
    for name in ("shearX", "translateY", "contrast", "posterize", "solarize", "rotate"):
        bins = np.arange(20) % 10
        signs = np.where(np.arange(20) % 3 == 0, -1, 1) if name in RANDOM_SIGN else np.ones(20, dtype=int)
        m = [float(s * RANGES[name][b]) for s, b in zip(signs, bins)]
        expected = as_tensor(np.stack([np.asarray(PIL_OPS[name](Image.fromarray(im), v)) for im, v in zip(images, m)]))
        got = augment.apply_operation(OURS[name], as_tensor(images), torch.tensor(m, dtype=torch.float64))
        assert torch.equal(got, expected), name


def pil_policy(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The whole augmentation with PIL, as uint8 levels (before ``ToTensor`` divides by 255),
    replaying ``ImageAugment``'s documented draws: sub-policy, crop and flip, whether each step
    applies, the sign of each."""
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    choice = torch.randint(25, (n,), generator=gen)
    cropped = random_crop_flip(images, 32, 4, gen)  # tested on its own in tests/test_data.py
    draws = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    negative = torch.rand(n, 2, generator=gen) < 0.5
    out = []
    for i in range(n):
        image = Image.fromarray(cropped[i].permute(1, 2, 0).numpy())
        p1, op1, bin1, p2, op2, bin2 = POLICY[int(choice[i])]
        for k, (p, op, bin_) in enumerate(((p1, op1, bin1), (p2, op2, bin2))):
            if draws[i, k] < p:
                sign = -1 if (op in RANDOM_SIGN and negative[i, k]) else 1
                image = PIL_OPS[op](image, sign * RANGES[op][bin_])
        out.append(np.asarray(image))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("device", DEVICES)
def test_the_augmentation_is_pils_policy_image_by_image(device):
    """Crop, flip and the policy on 400 CIFAR-sized images equal PIL's, image for image, given the
    same draws: every sub-policy and both steps occur, in order."""
    images = torch.from_numpy(np.concatenate([fixed_batch()] * 9)[:400]).permute(0, 3, 1, 2).contiguous()
    got = ImageAugment(32, padding=4, autoaugment=True)(images.to(device), torch.Generator().manual_seed(11))
    expected = pil_policy(images, 11)
    assert got.device.type == device and got.dtype == torch.float32
    # compared as uint8 levels: a GPU may divide by 255 as a multiplication by 1 / 255 (one ulp)
    assert torch.equal((got.cpu() * 255).round(), expected)
    if device == "cpu":
        assert torch.equal(got, expected / 255)  # ToTensor's division, bit for bit
    assert not torch.equal(expected, random_crop_flip(images, 32, 4, torch.Generator().manual_seed(0)).float())


def test_each_step_applies_with_its_probability_and_a_random_sign(monkeypatch):
    """Over 20,000 images, how often each (step, operation) runs matches the table within five
    standard deviations, and the signed operations are negative half the time."""
    n = 20_000
    calls: dict[tuple[int, str], int] = {}
    signs = []
    seen_step = []

    def record(name, images, magnitudes):
        calls[(seen_step[-1], name)] = calls.get((seen_step[-1], name), 0) + len(images)
        if name in augment.SIGNED:
            signs.append(magnitudes[magnitudes != 0])
        return images

    aug = ImageAugment(4, padding=0, autoaugment=True)
    steps = aug.steps(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.Generator().manual_seed(3))
    monkeypatch.setattr(augment, "apply_operation", record)
    next(steps)  # the draws, the crop and flip
    for k, _ in aug.groups:
        seen_step.append(k)
        next(steps, None)
    expected: dict[tuple[int, str], float] = {}
    for sub in POLICY:
        for k, (p, op) in enumerate(((sub[0], sub[1]), (sub[3], sub[4]))):
            expected[(k, OURS[op])] = expected.get((k, OURS[op]), 0) + n * p / 25
    expected = {key: mean for key, mean in expected.items() if mean}
    assert set(calls) == set(expected)
    for key, mean in expected.items():
        sd = math.sqrt(mean * (1 - mean / n))
        assert abs(calls[key] - mean) < 5 * sd, (key, calls[key], mean)
    signs = torch.cat(signs)
    negative = (signs < 0).sum().item()
    assert abs(negative - len(signs) / 2) < 5 * math.sqrt(len(signs) / 4), (negative, len(signs))


def test_without_autoaugment_only_crop_and_flip():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = ImageAugment(8, padding=1, autoaugment=False)(images, torch.Generator().manual_seed(2))
    assert torch.equal(out, random_crop_flip(images, 8, 1, torch.Generator().manual_seed(2)).float() / 255)


def test_unknown_operation_is_named():
    with pytest.raises(ValueError, match="unknown operation 'Blur'"):
        augment.apply_operation("Blur", torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.float64))
