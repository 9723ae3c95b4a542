"""The model zoo: shapes, parameter counts, neuron options, and torch.compile without breaks."""

import pytest
import torch

from mpdagl_triton import TdBNPLIF, models
from support.oracle import DEVICE

SMALL = {  # (in_channels, input_size) small enough for the CPU
    "resnet19": (3, 8), "resnet18": (3, 16), "vggsnn": (2, 16), "vgg13": (3, 32), "tiny": (1, 8),
}


def test_available():
    assert sorted(models.ZOO) == ["resnet18", "resnet19", "tiny", "vgg13", "vggsnn"]
    assert set(models.ZOO) <= set(models.available())  # and whatever this process registered


def test_resnet19_parameter_count():
    net = models.create("resnet19", num_classes=10, T=2)
    n = sum(p.numel() for p in net.parameters())
    assert 12.6e6 < n < 12.8e6, n  # the authors' ResNet-19: about 12.7 M
    assert len(list(net.neurons())) == 20  # stem + 8 blocks x 2 + 2 shortcuts + head


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_forward_shapes_and_backward(arch):
    torch.manual_seed(0)
    channels, size = SMALL[arch]
    net = models.create(arch, num_classes=7, T=2, in_channels=channels, input_size=size)
    x = torch.rand(3, channels, size, size)
    logits = net(x)
    assert logits.shape == (3, 7)
    per_t = net(x, return_timesteps=True)
    assert per_t.shape == (2, 3, 7)
    torch.testing.assert_close(per_t.mean(0), logits)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_from_pretrained_honours_strict(tmp_path):
    """The Hub mixin's ``strict``: by default a weights file must match the config exactly;
    ``strict=False`` loads what is there and leaves the rest as initialized."""
    from mpdagl_triton.checkpoint import CheckpointError, load_tensors, save_tensors

    torch.manual_seed(0)
    net = models.create("tiny", num_classes=7, T=2, in_channels=1, input_size=8)
    net.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "model.safetensors")
    dropped = next(name for name in tensors if name.endswith("weight"))
    del tensors[dropped]
    save_tensors(tmp_path / "model.safetensors", tensors, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"missing \\['{dropped}'\\]"):
        models.SpikingNetwork.from_pretrained(str(tmp_path))
    torch.manual_seed(1)
    loose = models.SpikingNetwork.from_pretrained(str(tmp_path), strict=False)
    state = loose.state_dict()
    assert all(torch.equal(state[name], t) for name, t in tensors.items())
    assert not torch.equal(state[dropped], net.state_dict()[dropped])  # a fresh initialization


def test_event_frames_input():
    net = models.create("vggsnn", num_classes=10, T=3, in_channels=2, input_size=16)
    assert net(torch.rand(2, 3, 2, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="event input has 4 frames, the model runs T = 3"):
        net(torch.rand(2, 4, 2, 16, 16))


@pytest.mark.parametrize("arch, channels, frames", [("resnet19", 3, False), ("vggsnn", 2, True)])
@pytest.mark.slow
def test_activations_run_channels_last_from_the_stem_on_cuda(arch, channels, frames):
    """The stem turns its input channels-last on CUDA (or when told to), so every convolution
    after it gets channels-last activations from an NCHW model, with the NCHW run's logits.
    The layout is checked in float32: cuDNN returns NCHW for any float64 convolution."""
    from mpdagl_triton.models.blocks import Stem

    torch.manual_seed(0)
    net = models.create(arch, num_classes=10, T=2, in_channels=channels, input_size=16).to(DEVICE)
    x = torch.rand((2, 2, channels, 16, 16) if frames else (2, channels, 16, 16), device=DEVICE)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []
    for conv in convs:
        conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].stride(1) == 1))
    (stem,) = [m for m in net.modules() if isinstance(m, Stem)]
    for choice in (None, True, False):
        stem.channels_last, seen[:] = choice, []
        net(x)
        expected = DEVICE.type == "cuda" if choice is None else choice
        assert seen == [expected] * len(convs), choice
    net, x = net.double(), x.double()
    logits = {}
    for choice in (True, False):
        stem.channels_last = choice
        logits[choice] = net(x)
    torch.testing.assert_close(logits[True], logits[False])


def test_bad_inputs_and_options():
    net = models.create("tiny", num_classes=10, T=2, in_channels=1, input_size=8)
    with pytest.raises(ValueError, match="input has 3 channels"):
        net(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected \[B, C, H, W\]"):
        net(torch.rand(8, 8))
    with pytest.raises(ValueError, match="input is 16x16; tiny takes 8x8 only"):
        net(torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="input must be floating point .* got torch.uint8"):
        net(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    vgg = models.create("vggsnn", num_classes=10, T=2, in_channels=2, input_size=16)
    with pytest.raises(ValueError, match="input is 32x32; vggsnn takes 16x16 only"):
        vgg(torch.rand(1, 2, 2, 32, 32))
    resnet = models.create("resnet19", num_classes=10, T=1, in_channels=3, input_size=8).eval()
    assert resnet(torch.rand(1, 3, 16, 16)).shape == (1, 10)  # global pooling: any size
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet50' \(did you mean resnet19 or "
                                         r"resnet18\?\); available: resnet18, resnet19, tiny, vgg13, vggsnn"):
        models.create("resnet50", 10, 2)
    with pytest.raises(ValueError, match="unknown neuron options"):
        models.create("tiny", 10, 2, decay=0.5)
    with pytest.raises(ValueError, match="timesteps"):
        models.create("tiny", 10, 0)
    for option, value in (("in_channels", 0), ("input_size", 0), ("input_size", 8.0)):
        with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got {value!r}"):
            models.create("tiny", 10, 2, **{option: value})


@pytest.mark.parametrize("arch,pools", [("tiny", 2), ("vggsnn", 4), ("vgg13", 5)])
def test_too_small_images_refused_when_built(arch, pools):
    """A flattening classifier needs a feature map left after the poolings: one size too small is
    refused by name when the network is built; the smallest size it names builds and runs."""
    smallest = 2 ** pools
    with pytest.raises(ValueError, match=f"{arch} halves its input {pools} times .* {smallest - 1}x"
                                         f"{smallest - 1} images leave no feature map; it needs at least "
                                         f"{smallest}x{smallest}"):
        models.create(arch, 10, 1, in_channels=1, input_size=smallest - 1)
    net = models.create(arch, 10, 1, in_channels=1, input_size=smallest)
    assert net(torch.rand(1, 1, smallest, smallest)).shape == (1, 10)


def test_neuron_options_reach_every_layer():
    net = models.create("resnet18", num_classes=10, T=2, surrogate="atan", width_rule="lsg",
                        learn_tau=False, tau=0.3, vth=0.7)
    layers = [m for _, m in net.neurons()]
    assert layers and all(isinstance(m, TdBNPLIF) for m in layers)
    assert all(m.surrogate == "atan" and m.width_rule == "lsg" and m.rho is None and m.vth == 0.7
               for m in layers)


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.slow
def test_every_architecture_compiles_fullgraph(arch):
    """The model code traces into one graph (fullgraph=True raises on any break)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    channels, size = SMALL[arch]
    net = models.create(arch, num_classes=5, T=2, in_channels=channels, input_size=size, backend="torch")
    x = torch.rand(2, channels, size, size)
    expected = net(x)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), expected)


@pytest.mark.parametrize("parameters", ["channels_last", "nchw"])
@pytest.mark.slow
def test_compiled_fused_model_matches_the_reference(parameters):
    """The Triton custom ops inside a compiled network whose activations are channels-last (its
    parameters channels-last, or NCHW with the stem turning the input channels-last, as on CUDA):
    same logits and gradients as the NCHW reference. (Channels-last puts many channels in one
    program, which keeps the interpreter fast.)"""
    from mpdagl_triton.models.blocks import Stem

    torch._dynamo.reset()
    torch.manual_seed(0)
    fused = models.create("tiny", num_classes=5, T=2, in_channels=1, input_size=8, backend="triton")
    fused = fused.to(DEVICE, memory_format=torch.channels_last if parameters == "channels_last"
                     else torch.contiguous_format)
    for stem in (m for m in fused.modules() if isinstance(m, Stem)):
        stem.channels_last = True
    plain = models.create("tiny", num_classes=5, T=2, in_channels=1, input_size=8, backend="torch").to(DEVICE)
    plain.load_state_dict(fused.state_dict())
    for stem in (m for m in plain.modules() if isinstance(m, Stem)):
        stem.channels_last = False
    x = torch.rand(2, 1, 8, 8, device=DEVICE)
    logits = torch.compile(fused, fullgraph=True, backend="aot_eager")(x)
    expected = plain(x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("stride,out_channels", [(1, 4), (2, 6)])
def test_resnet_block_adds_the_shortcut_after_the_second_neuron(stride, out_channels):
    """The authors' BasicBlock: out = neuron2(tdBN2(conv2(neuron1(tdBN1(conv1(x)))))) + shortcut(x). The
    block hands the shortcut to the second neuron (added as its spikes are written); the result
    must be the separate addition's, values and gradients."""
    from mpdagl_triton.models.resnet import BasicBlock

    torch.manual_seed(3)
    block = BasicBlock(4, out_channels, stride, backend="torch").eval()
    x = torch.randint(0, 3, (2, 3, 4, 8, 8)).float().requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    out = block(x)
    shortcut = x_plain if block.shortcut is None else block.shortcut(x_plain)
    plain = block.branch2(block.branch1(x_plain)) + shortcut
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    plain.backward(grad)
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-6, atol=1e-6)
