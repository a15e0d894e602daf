"""The fast path for :class:`~mcdrop.nets.models.DropoutCNN` on a CPU: the convolution after the first channel
dropout computed once per input channel and image, then mixed per pass by the keep mask.

Channel dropout keeps or drops whole feature maps, and the convolution after it (with the BatchNorm after that
folded in: weights ``W``, bias ``b``) is affine in them:

    conv(h * m / (1 - p)) = sum_c (m_c / (1 - p)) conv_c(h_c) + b,

``conv_c`` the bias-free convolution by ``W[:, c]`` of input channel ``c`` alone, ``p`` the rate the masks use
(:func:`~mcdrop.sampling.functional.quantized_rate`).  The ``C`` maps ``conv_c(h_c)`` are computed once per image
(``k^2 C H' W' O`` multiply-adds), so a pass costs one ``C``-term weighted sum, ``C H' W' O`` multiply-adds,
instead of the convolution's ``k^2 C H' W' O``.  The layers before the dropout run
once per image, as on the generic path; the layers after it run per pass, with each BatchNorm folded into the
convolution before it (eval statistics, :func:`torch.nn.utils.fusion.fuse_conv_bn_weights`) and ReLU applied
after max pooling (the two commute).  Masks are the generic path's (dropout module ``j`` draws from stream
``(j, 0)``); the outputs agree within float32 rounding (README "Reproducibility").  Work runs row-major, each
row's passes side by side, and the output is returned sample-major.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as tF
from torch.nn.utils.fusion import fuse_conv_bn_weights

from mcdrop.nets.mlp_plan import _version
from mcdrop.nets.models import DropoutCNN
from mcdrop.sampling import functional as F
from mcdrop.sampling import rng, runtime, winograd
from mcdrop.sampling.engine import dropout_layers, keyed_function, register_fast_path
from mcdrop.sampling.layers import ChannelDropout, Dropout

__all__ = ["CNNPlan"]

_PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)


def _pooled_conv(layers: list[nn.Module], i: int) -> bool:
    """Whether ``layers[i:i + 4]`` is a 3x3 convolution (stride 1, zero padding 1, undilated, ungrouped), a
    BatchNorm2d, a ReLU and a 2x2 max pooling (stride 2, unpadded, floor): what the fused kernel computes."""
    if i + 3 >= len(layers):
        return False
    conv, bn, relu, pool = layers[i], layers[i + 1], layers[i + 2], layers[i + 3]
    return type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and type(relu) is nn.ReLU \
        and type(pool) is nn.MaxPool2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1) \
        and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 \
        and conv.padding_mode == "zeros" and _pairs(pool.kernel_size) == (2, 2) \
        and _pairs(pool.stride) == (2, 2) and _pairs(pool.padding) == (0, 0) and _pairs(pool.dilation) == (1, 1) \
        and not pool.ceil_mode and not pool.return_indices


def _pairs(v: object) -> object:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


class _Folded:
    """The numbers one pass reads: each Conv2d with the BatchNorm after it folded in (by the conv's id), those
    followed by ReLU and 2x2 max pooling also packed for the fused kernel (when it is built), and the mixing
    basis' weights ``(C, k*k, O)`` and bias ``(O,)`` for the convolution after the first dropout; and the weight
    of the Linear after the Flatten with its columns in channels-last order, ``W.view(F, C, HW).transpose(1, 2)``
    (by the Linear's id), so a channels-last map is flattened without a copy."""

    def __init__(self, layers: list[nn.Module], first: int) -> None:
        self.convs: dict[int, tuple[Tensor, Tensor]] = {}
        self.pooled: dict[int, winograd.PackedConv] = {}
        self.kernel = kernel = winograd.load()
        with torch.no_grad():
            for i, m in enumerate(layers):
                if type(m) is nn.Conv2d and i + 1 < len(layers) and type(layers[i + 1]) is nn.BatchNorm2d:
                    bn = layers[i + 1]
                    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
                    fw, fb = fuse_conv_bn_weights(m.weight, m.bias, bn.running_mean, bn.running_var, bn.eps,
                                                  bn.weight, bn.bias)
                    self.convs[id(m)] = (fw.detach().contiguous(memory_format=torch.channels_last), fb.detach())
                    if kernel is not None and i != first + 1 and _pooled_conv(layers, i):  # not the mixed one
                        self.pooled[id(m)] = winograd.pack_weights(fw, fb, kernel.nr)
            self.hwc_linear: dict[int, Tensor] = {}
            channels = [m.out_channels for m in layers if type(m) is nn.Conv2d]
            for i, m in enumerate(layers[:-1]):
                lin = layers[i + 1]
                if type(m) is nn.Flatten and isinstance(lin, nn.Linear) and channels \
                        and lin.in_features % channels[-1] == 0:
                    f = lin.out_features
                    self.hwc_linear[id(lin)] = lin.weight.detach().view(f, channels[-1], -1).transpose(1, 2) \
                        .reshape(f, -1)
        conv = layers[first + 1]
        w, self.bias = self.convs[id(conv)]
        o, c = w.shape[:2]
        self.basis_weight = w.reshape(o, c, -1).permute(1, 2, 0).contiguous()  # (C, k*k, O)


class CNNPlan:
    """How to sample a :class:`DropoutCNN` whose first dropout is a channel dropout before a convolution (built
    by :meth:`for_model`)."""

    def __init__(self, model: DropoutCNN, layers: list[nn.Module], first: int, streams: dict[int, int],
                 kernel: tuple[int, int], pad: tuple[int, int]) -> None:
        self.model, self._layers, self._first, self._streams = model, layers, first, streams
        self._kernel, self._pad = kernel, pad  # of the convolution after the first dropout
        self._state: tuple[tuple[object, ...], _Folded] | None = None  # (version, folded), replaced whole
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: nn.Module) -> CNNPlan | None:
        """A plan if ``model`` is a float32 CPU DropoutCNN (exactly the class: a subclass may change ``forward``)
        whose first dropout is a :class:`ChannelDropout` followed by a stride-1, undilated, ungrouped Conv2d and a
        BatchNorm2d; every layer exactly of a kind DropoutCNN builds, each once; every Conv2d zero-padded by
        numbers (not ``"same"``), every BatchNorm2d with running statistics."""
        if type(model) is not DropoutCNN:
            return None
        layers = list(model.net)
        streams = {id(m): j for j, (_, m) in enumerate(dropout_layers(model))}
        first = next((i for i, m in enumerate(layers) if id(m) in streams), None)
        if first is None or first + 2 >= len(layers) or type(layers[first]) is not ChannelDropout:
            return None
        conv, bn = layers[first + 1], layers[first + 2]
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or conv.groups != 1 \
                or conv.stride != (1, 1) or conv.dilation != (1, 1) or len(conv.kernel_size) != 2:
            return None
        if any(type(m) not in (*_PLAIN, ChannelDropout, Dropout) for m in layers) \
                or len({id(m) for m in layers}) != len(layers):
            return None
        if any(type(m) is nn.Conv2d and (m.padding_mode != "zeros" or not isinstance(m.padding, tuple))
               for m in layers):  # the mixed convolution's padding included
            return None
        if any(type(m) is nn.BatchNorm2d and m.running_mean is None for m in layers):
            return None
        tensors = [t for m in layers for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
            return None
        kh, kw = conv.kernel_size
        assert isinstance(conv.padding, tuple)
        ph, pw = (int(v) for v in conv.padding)
        return cls(model, layers, first, streams, (kh, kw), (ph, pw))

    def _current(self) -> _Folded | None:
        """The folded weights, refolded when a weight or statistic was edited or replaced, or a rate changed;
        None when a rate is not in (0, 1) (the generic path handles p = 0 and p = 1) or a layer has forward hooks
        (the generic path runs them as the caller expects)."""
        layers = self._layers
        if any(m._forward_hooks or m._forward_pre_hooks for m in layers):
            return None
        rates = tuple(float(m.p) for m in layers if isinstance(m, ChannelDropout | Dropout))
        if any(not 0.0 < p < 1.0 for p in rates):
            return None
        version = tuple((id(t), t.data_ptr(), _version(t)) for m in layers for t in (*m.parameters(), *m.buffers())) \
            + rates
        state = self._state
        if state is None or state[0] != version:
            with self._lock:
                state = self._state
                if state is None or state[0] != version:
                    state = self._state = (version, _Folded(layers, self._first))
        return state[1]

    def sample(self, x: Tensor, key: int | Tensor, rows: Tensor, samples: Tensor) -> Tensor | None:
        """Model outputs of every (sample, row) pair, sample-major, or None when this model needs the generic
        path. Shape: x ``(B, *)`` -> ``(S * B, K)``."""
        folded = self._current()
        if folded is None:
            return None
        model, s, b = self.model, samples.numel(), x.shape[0]
        c = folded.basis_weight.shape[0]
        h = ((x.reshape(b, 1, *model.image_shape) - model.input_shift) / model.input_scale)
        h = self._run(self._layers[: self._first], h, folded, None)  # once per image
        ho, wo = self._out_size(h)
        per_row = c * max(1, ho * wo) * max(folded.bias.numel(), self._kernel[0] * self._kernel[1])  # basis, unfold
        group = max(1, runtime.element_budget_for(x.device) // per_row)  # rows whose bases are held at once
        out: Tensor | None = None
        for r0 in range(0, b, group):
            r1 = min(b, r0 + group)
            row_key = key[r0:r1] if isinstance(key, Tensor) else key

            def keys(m: nn.Module, row_key: int | Tensor = row_key, r0: int = r0, r1: int = r1) -> Tensor:
                """Module ``m``'s keys in (row, sample) order ``(B, S)``, the order the pairs run in."""
                return rng.stream_keys(row_key, (self._streams[id(m)], 0), rows[r0:r1], samples).t().contiguous()

            rest = self._layers[self._first + 3:]
            deferred = _fused_at(rest, 0, self._out_size(h), folded) is not None  # the kernel adds the bias
            y = self._mix(h[r0:r1], folded, keys(self._layers[self._first]), bias=not deferred)
            y = self._run(rest, y, folded, keys, folded.bias if deferred else None) / model.temperature
            if out is None:
                out = torch.empty((s, b, *y.shape[1:]), dtype=y.dtype)
            out[:, r0:r1] = y.view(r1 - r0, s, *y.shape[1:]).transpose(0, 1)
        assert out is not None
        return out.view(s * b, *out.shape[2:])

    def _out_size(self, h: Tensor) -> tuple[int, int]:
        """``(H', W')`` of the convolution after the first dropout on ``h`` ``(B, C, H, W)``."""
        return (h.shape[2] + 2 * self._pad[0] - self._kernel[0] + 1, h.shape[3] + 2 * self._pad[1] - self._kernel[1] + 1)

    def _mix(self, h: Tensor, folded: _Folded, keys: Tensor, bias: bool = True) -> Tensor:
        """The first dropout, its convolution and BatchNorm (less the bias unless ``bias``), for every (row, sample)
        pair: ``(B, C, H, W)`` and keys ``(B, S)`` -> ``(B * S, O, H', W')`` (channels-last memory)."""
        drop = self._layers[self._first]
        assert isinstance(drop, ChannelDropout)
        b, c = h.shape[:2]
        (ho, wo), (kh, kw) = self._out_size(h), self._kernel
        cols = tF.unfold(h, self._kernel, padding=self._pad).view(b, c, kh * kw, ho * wo)
        basis = torch.matmul(cols.transpose(2, 3), folded.basis_weight)  # (B, C, H'W', O): conv_c(h_c) per c
        o = folded.basis_weight.shape[2]
        mask = _scale(drop, keys, c)
        mixed = torch.baddbmm(folded.bias.repeat(ho * wo), mask, basis.view(b, c, -1)) if bias \
            else torch.bmm(mask, basis.view(b, c, -1))  # (B, S, H'W'O)
        return mixed.view(-1, ho, wo, o).permute(0, 3, 1, 2)

    def _run(self, layers: list[nn.Module], y: Tensor, folded: _Folded,
             keys: Callable[[nn.Module], Tensor] | None, input_bias: Tensor | None = None) -> Tensor:
        """``layers`` in eval mode on ``y + input_bias`` (per channel), BatchNorms folded, ReLU after pooling, each
        3x3 convolution followed by ReLU and 2x2 pooling (with the ReLU before it and a channel dropout after it)
        one call of the fused kernel; dropout keyed by ``keys(module)``."""
        if input_bias is not None and _fused_at(layers, 0, tuple(y.shape[2:]), folded) is None:
            y, input_bias = y + input_bias.view(1, -1, 1, 1), None
        i = 0
        while i < len(layers):
            m = layers[i]
            fused = _fused_at(layers, i, tuple(y.shape[2:]), folded)
            if fused is not None:
                assert folded.kernel is not None
                packed, relu = fused
                i += 5 if relu else 4  # (ReLU,) conv, BatchNorm, ReLU, pooling
                drop = layers[i] if i < len(layers) else None
                scale = None
                if keys is not None and type(drop) is ChannelDropout:  # fused: its mask scales the kernel's output
                    scale, i = _scale(drop, keys(drop), packed.out_channels).view(-1, packed.out_channels), i + 1
                y = folded.kernel.conv3x3_pool(y, packed, input_bias=input_bias, relu_input=relu, scale=scale)
                input_bias = None
                continue
            if type(m) is nn.Flatten and i + 1 < len(layers) and id(layers[i + 1]) in folded.hwc_linear \
                    and y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
                lin = layers[i + 1]
                assert isinstance(lin, nn.Linear)
                y = tF.linear(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1), folded.hwc_linear[id(lin)], lin.bias)
                i += 2
                continue
            if type(m) is nn.Conv2d and id(m) in folded.convs:
                w, bias = folded.convs[id(m)]
                y = tF.conv2d(y, w, bias, m.stride, m.padding, m.dilation, m.groups)
                i += 2  # the BatchNorm is folded in
                continue
            if type(m) is nn.ReLU and i + 1 < len(layers) and type(layers[i + 1]) is nn.MaxPool2d:
                y = layers[i + 1](y).relu_()
                i += 2
                continue
            fn = keyed_function(m)
            if fn is not None and keys is not None:
                y = fn(m, y, keys(m))
            elif type(m) is nn.ReLU:
                y = y.relu_()  # every tensor here is this pass's own
            elif type(m) is nn.BatchNorm2d:
                y = tF.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
            else:
                y = m(y)
            i += 1
        return y


def _fused_at(layers: list[nn.Module], i: int, size: tuple[int, ...], folded: _Folded) \
        -> tuple[winograd.PackedConv, bool] | None:
    """The packed convolution and whether a ReLU comes before it, when the fused kernel runs ``layers`` from ``i``
    on maps of ``size`` ``(H, W)``: ``(ReLU,) Conv2d, BatchNorm2d, ReLU, MaxPool2d``, the convolution packed, the
    maps at least 2x2."""
    if folded.kernel is None or i >= len(layers) or len(size) != 2 or min(size) < 2:
        return None
    relu = type(layers[i]) is nn.ReLU and i + 1 < len(layers)
    packed = folded.pooled.get(id(layers[i + 1] if relu else layers[i]))
    return None if packed is None else (packed, relu)


def _scale(drop: ChannelDropout, keys: Tensor, channels: int) -> Tensor:
    """The channel dropout's keep mask over its scale, ``m / (1 - p)``: keys ``(B, S)`` -> ``(B, S, channels)``,
    as :func:`~mcdrop.sampling.functional.mc_channel_dropout` draws it."""
    _, _, p_used = F.quantized_rate(drop.p)
    return F.keep_mask(keys, channels, drop.p).mul_(1.0 / (1.0 - p_used))


register_fast_path(DropoutCNN, CNNPlan.for_model)
