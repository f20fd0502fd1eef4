"""Every registry entry x task set: forward/backward/shapes on CPU; rebuild from model_args; size and name errors."""
import json
import warnings

import pytest
import torch
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models import DEFAULT_INPUTS, build_model, expand_first_conv, list_models, rebuild_model, summary

TASK_SETS = [("mask",), ("depth",), ("mask", "depth")]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared; tiny models do not need more
    yield
    torch.set_num_threads(n)


def test_registry_has_the_agreed_names():
    assert {"unet_small", "unet_medium", "unet_large", "resnet18_unet", "resnet34_unet"} <= set(list_models())


@pytest.mark.parametrize("tasks", TASK_SETS, ids="+".join)
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes(name, tasks):
    torch.manual_seed(0)
    model = build_model(name, tasks=tasks)  # pretrained defaults to False: nothing is downloaded
    x = torch.randn(2, 10, 32, 32)
    out = model(x)
    assert set(out) == set(tasks)
    for t in tasks:
        assert out[t].shape == (2, 1, 32, 32) and out[t].dtype == torch.float32
    if "depth" in tasks:
        assert out["depth"].min() >= 0 and out["depth"].max() <= 1
    sum(o.float().mean() for o in out.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    # the architecture rebuilds from its JSON-able record with the same parameters and buffers
    args = json.loads(json.dumps(model.model_args))
    assert args["name"] == name and args["tasks"] == list(tasks) and args["inputs"] == DEFAULT_INPUTS == "tolerant"
    twin = build_model(**args)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    twin.load_state_dict(model.state_dict())


def test_joint_decoders_per_task_or_shared():
    per_task = build_model("unet_small", tasks=("mask", "depth"), decoder="per_task")
    shared = build_model("unet_small", tasks=("mask", "depth"))  # the unet_small preset shares one decoder
    assert len(per_task.decoders) == 2 and len(shared.decoders) == 1
    assert len(build_model("unet_medium", tasks=("mask", "depth")).decoders) == 2  # other presets: one per task
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(shared) < n(per_task)
    out = shared(torch.randn(2, 10, 32, 32))
    assert out["mask"].shape == out["depth"].shape == (2, 1, 32, 32)
    assert build_model(**shared.model_args).model_args["decoder"] == "shared"
    assert build_model(**per_task.model_args).model_args["decoder"] == "per_task"


def test_options_are_recorded_and_validated():
    m = build_model("unet_small", widths=(8, 16, 32), upsample="transpose")
    assert m.model_args["widths"] == [8, 16, 32] and m.divisor == 4
    assert m(torch.randn(1, 10, 12, 12))["mask"].shape == (1, 1, 12, 12)
    with pytest.raises(EvaError, match="upsample"):
        build_model("unet_small", upsample="nearest-ish")
    with pytest.raises(EvaError, match="decoder"):
        build_model("unet_small", decoder="both")
    with pytest.raises(EvaError, match="bad option"):
        build_model("unet_small", depth_of_field=3)
    with pytest.raises(EvaError, match="tasks"):
        build_model("unet_small", tasks=("mask", "normals"))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(EvaError) as e:
        build_model("unet_hyper")
    for name in list_models():
        assert name in str(e.value)


def test_bad_size_names_the_nearest_valid_one():
    m = build_model("resnet18_unet")
    with pytest.raises(EvaError, match=r"input 225x225 is not supported: sizes must be multiples of 32; nearest valid: 224x224"):
        m.check_input_size(225, 225)
    with pytest.raises(EvaError, match="nearest valid: 64x32"):
        m(torch.randn(1, 10, 70, 30))
    u = build_model("unet_small")  # 4 downsamplings -> multiples of 16
    with pytest.raises(EvaError, match="multiples of 16; nearest valid: 48x16"):
        u(torch.randn(1, 10, 50, 8))
    u.check_input_size(48, 16)


@pytest.mark.parametrize("inputs", ["concat", "diff", "tolerant"])
def test_expand_first_conv_keeps_the_composite_and_sees_the_difference(inputs):
    conv3 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv3.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    conv = expand_first_conv(conv3, inputs)
    c = {"diff": 9, "tolerant": 10, "concat": 6}[inputs]
    assert conv.in_channels == c and conv.stride == (2, 2) and conv.padding == (1, 1)
    assert torch.equal(conv.bias, conv3.bias)
    x = torch.randn(2, 3, 8, 8)
    same = torch.cat([x, x, torch.zeros_like(x), torch.zeros_like(x[:, :1])], 1)[:, :c]  # bg == fg_bg: the RGB network's own activations
    assert torch.allclose(conv(same), conv3(x), atol=1e-5)


@pytest.mark.parametrize("inputs", ["concat", "diff"])
def test_resnet_first_conv_responds_to_a_difference_at_initialisation(inputs):
    """With the first round's 0.5 w split, conv1 saw (bg + fg_bg) / 2: swapping the images, or replacing both by
    their mean, changed nothing. Now the response depends on which image holds the object."""
    torch.manual_seed(0)
    m = build_model("resnet18_unet", inputs=inputs)
    conv1 = m.encoder.conv1
    bg, obj = torch.randn(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    obj[..., 8:20, 8:20] = 2.0
    fg = bg + obj

    def resp(b, f):
        return conv1(torch.cat([b, f, (f - b).abs()], 1)[:, :conv1.in_channels])

    mean = (bg + fg) / 2
    assert (resp(bg, fg) - resp(mean, mean)).abs().max() > 0.1
    assert (resp(bg, fg) - resp(fg, bg)).abs().max() > 0.1
    # the first round's split (0.5 w on each image, no difference channels) fails the same check
    w = m.encoder.conv1.weight[:, 3:6]  # the pretrained (here random) RGB filter
    old = lambda b, f: nn.functional.conv2d(torch.cat([b, f], 1), torch.cat([w, w], 1) / 2, stride=2, padding=3)
    assert torch.allclose(old(bg, fg), old(mean, mean), atol=1e-5)


def test_pretrained_falls_back_offline(monkeypatch):
    import torchvision.models as tvm

    real = tvm.resnet18

    def no_network(weights=None, **kw):
        if weights is not None:
            raise RuntimeError("no network in tests")
        return real(weights=None, **kw)

    monkeypatch.setattr(tvm, "resnet18", no_network)
    with pytest.warns(UserWarning, match="random init"):
        m = build_model("resnet18_unet", pretrained=True)
    assert m.model_args["pretrained"] is True
    # rebuilding from a checkpoint's record never fetches weights (the state_dict replaces them)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a download attempt would warn (and fail) here
        twin = rebuild_model(m.model_args)
    assert twin.model_args["pretrained"] is True
    assert twin.state_dict().keys() == m.state_dict().keys()


def test_torchsummary_handles_the_dict_output(capsys):
    summary(build_model("unet_small", tasks=("mask", "depth")), size=32)
    assert "Total params" in capsys.readouterr().out


def test_two_stems_keep_bg_and_fg_bg_apart_in_the_first_layer():
    torch.manual_seed(0)
    m = build_model("unet_small", tasks=("mask", "depth"), stem="two", inputs="concat", mask_head="plain")
    out = m(torch.randn(2, 6, 32, 32))
    assert out["mask"].shape == out["depth"].shape == (2, 1, 32, 32)
    sum(o.mean() for o in out.values()).backward()
    params = list(m.parameters())
    assert params and all(p.grad is not None for p in params)
    stem = m.encoder.stem
    assert stem.bg[0][0].in_channels == 3 and stem.fg_bg[0][0].in_channels == 3
    # the bg stem's output depends on the bg half only
    m.eval()
    x = torch.randn(1, 6, 32, 32)
    y = x.clone()
    y[:, 3:] += 1.0
    assert torch.equal(stem.bg(x[:, :3]), stem(y)[:, :stem.bg[-1][0].out_channels])
    assert build_model(**m.model_args).model_args["stem"] == "two"
    with pytest.raises(EvaError, match="stem"):
        build_model("unet_small", stem="three")
