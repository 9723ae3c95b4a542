"""Training augmentation on the training device, per sample, on whole batches.

Images arrive as uint8 ``[B, C, H, W]`` and leave as float in [0, 1]; event frames arrive as float
``[B, T, C, H, W]`` counts. Every random choice (crops, flips, rolls, and AutoAugment's sub-policy,
operations and signs per image) is drawn on the CPU from the epoch's generator and shipped to the
device, so an epoch's augmentation depends on (seed, epoch) only, not on whether the run was
resumed nor on what else draws from torch's global generator. Nothing here reads a device value
back: on a GPU the host prepares the next batches while queued steps run.

AutoAugment is the CIFAR-10 policy of Cubuk et al. (2019) as the PIL implementation most papers
train with applies it (``CIFAR10Policy``): 25 sub-policies of two (operation, probability,
magnitude bin) steps each, one sub-policy per image. Our operations work on float tensors that
hold uint8 values and round as PIL does after each operation, so they give PIL's pixels; the
table, the ranges and what stays different are in ``docs/method.md#augmentation``.
"""

from __future__ import annotations

import math
from typing import Callable, Generator, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

Result = TypeVar("Result")

#: grey the geometric operations leave where no source pixel lands: PIL's fill (128, 128, 128)
FILL = 128.0


def _bins(low: float, high: float) -> tuple[float, ...]:
    # numpy's linspace, as the policy computes its ranges: the last bit decides some roundings
    return tuple(float(v) for v in np.linspace(low, high, 10))


#: each operation's magnitude per bin 0..9; an operation in ``SIGNED`` gets a random sign per
#: image. Shears are PIL's affine coefficient, translations a fraction of the side, Rotate
#: degrees counter-clockwise, Color / Contrast / Sharpness / Brightness ``m`` in the enhance
#: factor ``1 +- m``, Posterize the bits kept, Solarize the threshold; the rest take none.
MAGNITUDES: dict[str, tuple[float, ...]] = {
    "ShearX": _bins(0, 0.3),
    "ShearY": _bins(0, 0.3),
    "TranslateX": _bins(0, 150 / 331),
    "TranslateY": _bins(0, 150 / 331),
    "Rotate": _bins(0, 30),
    "Color": _bins(0.0, 0.9),
    "Posterize": tuple(float(v) for v in np.round(np.linspace(8, 4, 10))),
    "Solarize": _bins(256, 0),
    "Contrast": _bins(0.0, 0.9),
    "Sharpness": _bins(0.0, 0.9),
    "Brightness": _bins(0.0, 0.9),
    "AutoContrast": (0.0,) * 10,
    "Equalize": (0.0,) * 10,
    "Invert": (0.0,) * 10,
}
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Color", "Contrast", "Sharpness",
                    "Brightness"})  # Rotate is not: the policy always turns counter-clockwise


class Step(NamedTuple):
    """One step of a sub-policy: ``operation`` at magnitude ``bin``, with ``probability``."""

    operation: str
    probability: float
    bin: int


#: AutoAugment's CIFAR-10 policy: each image draws one of these uniformly, then applies its first
#: step with the step's probability, then its second.
CIFAR10_POLICY: tuple[tuple[Step, Step], ...] = (
    (Step("Invert", 0.1, 7), Step("Contrast", 0.2, 6)),
    (Step("Rotate", 0.7, 2), Step("TranslateX", 0.3, 9)),
    (Step("Sharpness", 0.8, 1), Step("Sharpness", 0.9, 3)),
    (Step("ShearY", 0.5, 8), Step("TranslateY", 0.7, 9)),
    (Step("AutoContrast", 0.5, 8), Step("Equalize", 0.9, 2)),
    (Step("ShearY", 0.2, 7), Step("Posterize", 0.3, 7)),
    (Step("Color", 0.4, 3), Step("Brightness", 0.6, 7)),
    (Step("Sharpness", 0.3, 9), Step("Brightness", 0.7, 9)),
    (Step("Equalize", 0.6, 5), Step("Equalize", 0.5, 1)),
    (Step("Contrast", 0.6, 7), Step("Sharpness", 0.6, 5)),
    (Step("Color", 0.7, 7), Step("TranslateX", 0.5, 8)),
    (Step("Equalize", 0.3, 7), Step("AutoContrast", 0.4, 8)),
    (Step("TranslateY", 0.4, 3), Step("Sharpness", 0.2, 6)),
    (Step("Brightness", 0.9, 6), Step("Color", 0.2, 8)),
    (Step("Solarize", 0.5, 2), Step("Invert", 0.0, 3)),
    (Step("Equalize", 0.2, 0), Step("AutoContrast", 0.6, 0)),
    (Step("Equalize", 0.2, 8), Step("Equalize", 0.6, 4)),
    (Step("Color", 0.9, 9), Step("Equalize", 0.6, 6)),
    (Step("AutoContrast", 0.8, 4), Step("Solarize", 0.2, 8)),
    (Step("Brightness", 0.1, 3), Step("Color", 0.7, 0)),
    (Step("Solarize", 0.4, 5), Step("AutoContrast", 0.9, 3)),
    (Step("TranslateY", 0.9, 9), Step("TranslateY", 0.7, 9)),
    (Step("AutoContrast", 0.9, 2), Step("Solarize", 0.8, 3)),
    (Step("Equalize", 0.8, 8), Step("Invert", 0.1, 3)),
    (Step("TranslateY", 0.7, 9), Step("AutoContrast", 0.9, 1)),
)


def finish(work: Generator[None, None, Result]) -> Result:
    """Run a piece-by-piece computation (an augmentation's ``steps``) to its end; its result."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value


def random_crop_flip(images: Tensor, size: int, padding: int, generator: torch.Generator) -> Tensor:
    """A ``size`` x ``size`` window of each image zero-padded by ``padding`` on every side, at a
    uniformly random offset, mirrored left-right with probability 1/2.

    Args:
        images: ``[N, C, H, W]``, any dtype (uint8 images stay uint8), on any device.
        size: side of the output; ``H + 2 * padding`` and ``W + 2 * padding`` must reach it.
        generator: CPU generator of the draws (three per image: row, column, flip).

    Returns:
        ``[N, C, size, size]``, ``images``' dtype and device.

    Two gathers whatever ``N`` (slicing image by image would cost ~3 dispatches per image on a GPU).

    Example:
        >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> random_crop_flip(x, 4, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 1, 4, 4])
    """
    N, C, H, W = images.shape
    if min(H, W) + 2 * padding < size:
        raise ValueError(f"cannot crop {size}x{size} from {H}x{W} images padded by {padding}")
    top = torch.randint(H + 2 * padding - size + 1, (N, 1), generator=generator) - padding
    left = torch.randint(W + 2 * padding - size + 1, (N, 1), generator=generator) - padding
    flip = torch.rand(N, 1, generator=generator) < 0.5
    steps = torch.arange(size)
    rows, cols = top + steps, left + torch.where(flip, size - 1 - steps, steps)
    rows, cols = torch.stack([rows, cols]).to(images.device, non_blocking=True)  # one copy
    x = images.gather(2, rows.clamp(0, H - 1).view(N, 1, size, 1).expand(N, C, size, W))
    x = x.gather(3, cols.clamp(0, W - 1).view(N, 1, 1, size).expand(N, C, size, size))
    inside = (((rows >= 0) & (rows < H)).view(N, 1, size, 1)
              & ((cols >= 0) & (cols < W)).view(N, 1, 1, size))
    return x * inside  # the zero padding


# -- the operations ---------------------------------------------------------------------------
# Each takes float images holding uint8 values ([n, C, H, W], on the device) and per-image
# parameters (from ``operation_parameters``, shipped there) and returns uint8 values again,
# rounded where PIL rounds: float32 where PIL computes in float (blends, the smoothing filter),
# float64 where it computes in double (bicubic resampling, AutoContrast's table), integers where
# it does (Equalize, nearest-neighbour geometry in 16.16 fixed point).


def _to_uint8(x: Tensor) -> Tensor:
    return x.clamp(0, 255).trunc()  # PIL's clip then C's cast: truncation, not rounding


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)`` (every ImageEnhance): in float32, in its order."""
    factor = factor.to(torch.float32).view(-1, 1, 1, 1)
    return _to_uint8(degenerate + factor * (x - degenerate))  # two roundings, as C's float does


def _grey(x: Tensor) -> Tensor:
    """PIL's RGB -> L: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, exact in float32 (< 2^24)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _color(x: Tensor, p: Tensor) -> Tensor:
    return _blend(_grey(x), x, p[:, 0])


def _contrast(x: Tensor, p: Tensor) -> Tensor:
    # the degenerate image is the grey level's mean, rounded half up (ImageStat's mean in double)
    total = _grey(x).double().sum(dim=(1, 2, 3), keepdim=True)  # integers: exact in any order
    # a true division (t / number may multiply by the reciprocal on a GPU)
    mean = torch.floor(total / torch.full_like(total, x.shape[-2] * x.shape[-1]) + 0.5)
    return _blend(mean.to(x.dtype), x, p[:, 0])


def _brightness(x: Tensor, p: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x), x, p[:, 0])


# PIL's SMOOTH kernel, its weights divided by 13 in float32; rows are summed bottom row first
_SMOOTH_EDGE, _SMOOTH_CENTRE = float(np.float32(1 / 13)), float(np.float32(5 / 13))


def _smooth(x: Tensor) -> Tensor:
    """``x.filter(ImageFilter.SMOOTH)``: 3x3 in float32 with +0.5 then truncation; the outermost
    rows and columns are copied unchanged."""
    def row(r: Tensor, centre: float) -> Tensor:
        return (r[..., :-2] * _SMOOTH_EDGE + r[..., 1:-1] * centre) + r[..., 2:] * _SMOOTH_EDGE

    ss = ((row(x[:, :, 2:], _SMOOTH_EDGE) + 0.5) + row(x[:, :, 1:-1], _SMOOTH_CENTRE)) \
        + row(x[:, :, :-2], _SMOOTH_EDGE)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = _to_uint8(ss)
    return out


def _sharpness(x: Tensor, p: Tensor) -> Tensor:
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x  # PIL's 3x3 filter leaves such images as they are
    return _blend(_smooth(x), x, p[:, 0])


def _posterize(x: Tensor, p: Tensor) -> Tensor:
    step = p[:, 0].to(x.dtype).view(-1, 1, 1, 1)  # 2 ** (8 - bits): keep the top ``bits`` bits
    return torch.floor(x / step) * step


def _solarize(x: Tensor, p: Tensor) -> Tensor:
    threshold = p[:, 0].view(-1, 1, 1, 1)
    return torch.where(x < threshold, x, 255 - x)


def _invert(x: Tensor, p: Tensor) -> Tensor:
    return 255 - x


def _autocontrast(x: Tensor, p: Tensor) -> Tensor:
    """Per channel, [min, max] stretched to [0, 255] by PIL's table ``int(v * scale + offset)``
    in double; a channel of one value stays as it is."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)  # not 255 / t: torch multiplies by 1 / t
    offset = -lo * scale
    stretched = _to_uint8(x.double() * scale + offset)
    return torch.where(hi > lo, stretched, x.double()).to(x.dtype)


def _equalize(x: Tensor, p: Tensor) -> Tensor:
    """PIL's ``ImageOps.equalize`` per channel, in integers: ``lut[v] = (step // 2 + #below v) //
    step`` with ``step = (pixels - #largest value) // 255``; identity where ``step`` is 0."""
    n, C, H, W = x.shape
    v = x.reshape(n * C, H * W).long()
    hist = torch.zeros(n * C, 256, dtype=torch.long, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    step = (H * W - hist.gather(1, v.amax(dim=1, keepdim=True))) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, v).reshape(x.shape).to(x.dtype)


def _translate(x: Tensor, p: Tensor, dim: int) -> Tensor:
    """Nearest-neighbour shift: output pixel ``i`` reads ``i + shift`` along ``dim``, else FILL."""
    n, size = x.shape[0], x.shape[dim]
    source = torch.arange(size, device=x.device) + p[:, 0].long().view(n, 1)
    inside = (source >= 0) & (source < size)
    shape = [n, 1, 1, 1]
    shape[dim] = size
    index = source.clamp(0, size - 1).view(shape).expand_as(x)
    return torch.where(inside.view(shape), x.gather(dim, index), FILL)


def _translate_x(x: Tensor, p: Tensor) -> Tensor:
    return _translate(x, p, 3)


def _translate_y(x: Tensor, p: Tensor) -> Tensor:
    return _translate(x, p, 2)


def _rotate(x: Tensor, p: Tensor) -> Tensor:
    """PIL's nearest-neighbour affine in 16.16 fixed point (``p``: its six integer coefficients)."""
    n, C, H, W = x.shape
    a = p.long()
    ys = torch.arange(H, device=x.device).view(1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, W)
    col = torch.div(a[:, 2].view(n, 1, 1) + ys * a[:, 1].view(n, 1, 1) + xs * a[:, 0].view(n, 1, 1),
                    65536, rounding_mode="floor")
    row = torch.div(a[:, 5].view(n, 1, 1) + ys * a[:, 4].view(n, 1, 1) + xs * a[:, 3].view(n, 1, 1),
                    65536, rounding_mode="floor")
    inside = ((col >= 0) & (col < W) & (row >= 0) & (row < H)).view(n, 1, H, W)
    index = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).view(n, 1, H * W).expand(n, C, H * W)
    return torch.where(inside, x.reshape(n, C, H * W).gather(2, index).view(n, C, H, W), FILL)


def _cubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    # PIL's BICUBIC macro (cubic convolution with a = -1), term by term in its order
    p2 = v3 - v1
    p3 = ((2 * (v1 - v2)) + v3) - v4
    p4 = ((v2 - v1) - v3) + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _affine_bicubic(x: Tensor, p: Tensor) -> Tensor:
    """PIL's ``transform(AFFINE, p, BICUBIC)`` in double: output pixel centre (x + .5, y + .5)
    reads ``(p0 x + p1 y + p2, p3 x + p4 y + p5)``; 4x4 taps clamped to the edge; FILL where the
    point falls outside the image."""
    n, C, H, W = x.shape
    a = p.double().view(n, 6, 1, 1)
    yc = torch.arange(H, device=x.device, dtype=torch.float64).view(1, H, 1) + 0.5
    xc = torch.arange(W, device=x.device, dtype=torch.float64).view(1, 1, W) + 0.5
    xin = (a[:, 0] * xc + a[:, 1] * yc) + a[:, 2]  # [n, H, W]
    yin = (a[:, 3] * xc + a[:, 4] * yc) + a[:, 5]
    inside = ((xin >= 0) & (xin < W) & (yin >= 0) & (yin < H)).view(n, 1, H, W)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs), torch.floor(ys)
    dx, dy = (xs - x0).unsqueeze(1), (ys - y0).unsqueeze(1)
    cols = [(x0 + k).clamp(0, W - 1).long() for k in (-1, 0, 1, 2)]
    flat = x.double().reshape(n, C, H * W)
    rows = []
    for k in (-1, 0, 1, 2):
        r = (y0 + k).clamp(0, H - 1).long() * W
        taps = [flat.gather(2, (r + c).view(n, 1, H * W).expand(n, C, H * W)).view(n, C, H, W) for c in cols]
        rows.append(_cubic(*taps, dx))
    out = _to_uint8(_cubic(*rows, dy))
    return torch.where(inside, out, FILL).to(x.dtype)


def _pil_rotation(degrees: float, height: int, width: int) -> list[int]:
    """The 16.16 fixed-point coefficients PIL's ``rotate`` (nearest, centre, no expand) walks."""
    angle = -math.radians(degrees % 360.0)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    cx, cy = width / 2, height / 2
    m[2] = m[0] * -cx + m[1] * -cy + 0.0 + cx
    m[5] = m[3] * -cx + m[4] * -cy + 0.0 + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    return [fix(m[0]), fix(m[1]), fix(m[2] + m[0] * 0.5 + m[1] * 0.5),
            fix(m[3]), fix(m[4]), fix(m[5] + m[3] * 0.5 + m[4] * 0.5)]


def operation_parameters(name: str, magnitudes: Tensor, height: int, width: int) -> Tensor:
    """Per-image parameters of operation ``name`` at signed ``magnitudes`` (float64 ``[n]``, CPU),
    computed on the host in double as PIL does: ``[n, k]`` float64 (integers where PIL uses them).
    """
    m = magnitudes.double().tolist()
    if name == "ShearX":
        rows = [[1.0, s, 0.0, 0.0, 1.0, 0.0] for s in m]
    elif name == "ShearY":
        rows = [[1.0, 0.0, 0.0, s, 1.0, 0.0] for s in m]
    elif name in ("TranslateX", "TranslateY"):
        # PIL's nearest-neighbour scale path reads floor(i + 0.5 + offset) for output pixel i
        side = width if name == "TranslateX" else height
        rows = [[float(math.floor(s * side + 0.5))] for s in m]
    elif name == "Rotate":
        rows = [[float(v) for v in _pil_rotation(s, height, width)] for s in m]
    elif name in ("Color", "Contrast", "Sharpness", "Brightness"):
        rows = [[float(np.float32(1 + s))] for s in m]  # C's float alpha
    elif name == "Posterize":
        rows = [[2.0 ** (8 - int(s))] for s in m]  # the step between the levels kept
    elif name in MAGNITUDES:
        rows = [[s] for s in m]
    else:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(MAGNITUDES)}")
    return torch.tensor(rows, dtype=torch.float64).view(len(m), -1)


_APPLY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ShearX": _affine_bicubic, "ShearY": _affine_bicubic, "TranslateX": _translate_x,
    "TranslateY": _translate_y, "Rotate": _rotate, "Color": _color, "Posterize": _posterize,
    "Solarize": _solarize, "Contrast": _contrast, "Sharpness": _sharpness, "Brightness": _brightness,
    "AutoContrast": _autocontrast, "Equalize": _equalize, "Invert": _invert,
}


def apply_operation(name: str, images: Tensor, magnitudes: Tensor) -> Tensor:
    """Operation ``name`` on each image at its signed magnitude, as PIL computes it.

    Args:
        images: float ``[n, C, H, W]`` holding uint8 values (0..255), on any device.
        magnitudes: float64 ``[n]`` on the CPU: the operation's magnitude (``MAGNITUDES``), with
            its sign for the operations in ``SIGNED``.

    Returns:
        float ``[n, C, H, W]`` holding uint8 values, on ``images``' device.

    Example:
        >>> x = torch.tensor([[[[0.0, 100.0], [200.0, 255.0]]]])  # one grey 2x2 image
        >>> apply_operation("Solarize", x, torch.tensor([128.0], dtype=torch.float64))
        tensor([[[[  0., 100.],
                  [ 55.,   0.]]]])
    """
    params = operation_parameters(name, magnitudes, images.shape[-2], images.shape[-1])
    return _APPLY[name](images, params.to(images.device, non_blocking=True))


class ImageAugment(nn.Module):
    """Random crop with zero padding, horizontal flip, and optionally AutoAugment (``CIFAR10_POLICY``).

    Everything draws per image, from ``generator`` in this order: the sub-policy (``randint(25,
    (N,))``), the crop and flip (``random_crop_flip``), whether each of the two steps applies
    (``rand(N, 2, float64) < probability``) and the sign of each step's magnitude (``rand(N, 2) <
    0.5``: negative). Each (step, operation) is then applied once, to all the images that drew
    it: at most 2 x 14 calls per batch of images, however many images, so that on a GPU the cost
    is per call and the loader augments several batches at once (``Loader``).

    ``steps`` does the same work in ``pieces`` pieces (the draws with the crop and flip, then one
    per (step, operation) of the policy), so that the loader can interleave the next chunk's
    augmentation with the training steps of the current one.
    """

    def __init__(self, size: int, padding: int, autoaugment: bool):
        super().__init__()
        self.size, self.padding = size, padding
        self.policy = CIFAR10_POLICY if autoaugment else None
        self.groups: list[tuple[int, str]] = []  # (step, operation) in the order they run
        self._code = {name: i for i, name in enumerate(MAGNITUDES)}
        if self.policy is not None:  # the table as [sub-policy, step] tensors, indexed by the draws
            steps = [step for sub in self.policy for step in sub]
            self._operation = torch.tensor([self._code[s.operation] for s in steps]).view(-1, 2)
            self._probability = torch.tensor([s.probability for s in steps], dtype=torch.float64).view(-1, 2)
            self._magnitude = torch.tensor([MAGNITUDES[s.operation][s.bin] for s in steps],
                                           dtype=torch.float64).view(-1, 2)
            self._signed = torch.tensor([s.operation in SIGNED for s in steps]).view(-1, 2)
            self.groups = [(k, name) for k in (0, 1) for name in MAGNITUDES
                           if any(sub[k].operation == name for sub in self.policy)]
        self.pieces = 1 + len(self.groups)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return finish(self.steps(images, generator))

    def steps(self, images: Tensor, generator: torch.Generator) -> Generator[None, None, Tensor]:
        """``forward`` as a generator that yields between its ``pieces`` and returns the images."""
        n = len(images)
        choice = None  # drawn first: the sub-policy of each image, then the crops and flips
        if self.policy is not None:
            choice = torch.randint(len(self.policy), (n,), generator=generator)
        x = random_crop_flip(images, self.size, self.padding, generator).float()
        if choice is None:
            return x / 255
        fires = torch.rand(n, 2, generator=generator, dtype=torch.float64) < self._probability[choice]
        negative = torch.rand(n, 2, generator=generator) < 0.5
        magnitude = torch.where(self._signed[choice] & negative, -1.0, 1.0) * self._magnitude[choice]
        operation = self._operation[choice]
        for k, name in self.groups:  # both steps' images known on the host: no sync
            yield
            picked = (fires[:, k] & (operation[:, k] == self._code[name])).nonzero().flatten()
            if len(picked):
                on_device = picked.to(x.device, non_blocking=True)
                x.index_copy_(0, on_device, apply_operation(name, x[on_device], magnitude[picked, k]))
        return x / 255


class EventAugment(nn.Module):
    """Horizontal flip and a random roll of up to ``max_shift`` pixels along both axes."""

    pieces = 1  # see ImageAugment.steps

    def __init__(self, max_shift: int = 5):
        super().__init__()
        self.max_shift = max_shift

    def steps(self, frames: Tensor, generator: torch.Generator) -> Generator[None, None, Tensor]:
        """``forward`` in one piece (see ``ImageAugment.steps``)."""
        return self(frames, generator)
        yield  # unreachable: makes this a generator, of a single piece

    def forward(self, frames: Tensor, generator: torch.Generator) -> Tensor:  # [B, T, C, H, W]
        x = frames.float()
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        flip = (torch.rand(B, generator=generator) < 0.5).to(x.device, non_blocking=True)
        x = torch.where(flip.view(B, 1, 1, 1, 1), x.flip(-1), x)
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (2, B), generator=generator)
        shifts = shifts.to(x.device, non_blocking=True)
        rows = (torch.arange(H, device=x.device).view(1, H) - shifts[0].view(B, 1)) % H
        cols = (torch.arange(W, device=x.device).view(1, W) - shifts[1].view(B, 1)) % W
        x = x.gather(-2, rows.view(B, 1, 1, H, 1).expand_as(x))
        return x.gather(-1, cols.view(B, 1, 1, 1, W).expand_as(x))


def build(kind: str, input_size: int) -> nn.Module | None:
    """The training augmentation named by a dataset: none, crop+flip, cifar (with AutoAugment), dvs."""
    if kind == "none":
        return None
    if kind == "cifar":
        return ImageAugment(input_size, padding=4, autoaugment=True)
    if kind == "crop-flip":
        return ImageAugment(input_size, padding=max(1, input_size // 8), autoaugment=False)
    if kind == "dvs":
        return EventAugment(5)
    raise ValueError(f"unknown augmentation {kind!r}")
