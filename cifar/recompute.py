"""Training forward pass that keeps a third of the activations: BatchNorm and activation outputs recomputed.

In a plain SmallCNN every convolution's input is ``act(bn(h))``, and autograd keeps
three tensors of that size per layer for the backward pass: ``h`` (BatchNorm's
input), ``bn(h)`` (the activation's input) and ``act(bn(h))`` (the convolution's
input). ``norm_act_conv`` computes ``conv(act(bn(h)))`` keeping only ``h`` and
BatchNorm's two per-channel statistics, and recomputes the other two in the backward
pass from ``h`` with the same kernels (so the recomputed tensors, and the gradients,
are the ones autograd would have used, bit for bit). The price is one more BatchNorm
and activation pass per layer, elementwise work, against the convolutions' matmuls.
A SmallCNN with ``recompute`` set runs its training passes that way (``TrainConfig.low_memory``);
models it cannot chain (residual blocks, dropout > 0, a conv stem) take the usual path.

Usage:
    out = norm_act_conv(h, block.bn, block.act, next_block.conv)   # = next_block.conv(block.act(block.bn(h)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten


def _norm(h: torch.Tensor, bn: nn.BatchNorm2d | None, update: bool):
    """(bn(h) in training mode, its batch mean, its inverse std); ``update``: the running statistics too."""
    if bn is None:
        return h, None, None
    if not update:
        return aten.native_batch_norm(h, bn.weight, bn.bias, None, None, True, 0.0, bn.eps)
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return aten.native_batch_norm(h, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, factor, bn.eps)


def _act(y: torch.Tensor, act: nn.Module) -> torch.Tensor:
    return F.gelu(y) if isinstance(act, nn.GELU) else F.relu(y)


class _NormActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, bn_weight, bn_bias, conv_weight, bn, act, conv):
        y, mean, invstd = _norm(h, bn, update=True)
        out = F.conv2d(_act(y, act), conv_weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(h, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.bn, ctx.act, ctx.conv = bn, act, conv
        return out

    @staticmethod
    def backward(ctx, grad):
        h, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        bn, act, conv = ctx.bn, ctx.act, ctx.conv
        y = _norm(h, bn, update=False)[0]
        z = _act(y, act)
        grad_z, grad_conv, _ = aten.convolution_backward(
            grad, z, conv_weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
            [True, ctx.needs_input_grad[3], False])
        if isinstance(act, nn.GELU):
            del z
            grad_y = aten.gelu_backward(grad_z, y)
        else:
            grad_y = aten.threshold_backward(grad_z, z, 0)
        del grad_z, y
        grad_h = grad_bn_weight = grad_bn_bias = None
        if bn is None:
            grad_h = grad_y
        else:
            grad_h, grad_bn_weight, grad_bn_bias = aten.native_batch_norm_backward(
                grad_y, h, bn_weight, None, None, mean, invstd, True, bn.eps,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_h, grad_bn_weight, grad_bn_bias, grad_conv, None, None, None


def norm_act_conv(h: torch.Tensor, bn: nn.BatchNorm2d | None, act: nn.Module, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(act(bn(h)))`` (``bn`` None: ``conv(act(h))``), keeping only ``h`` for the backward pass."""
    return _NormActConv.apply(h, bn.weight if bn is not None else None, bn.bias if bn is not None else None,
                              conv.weight, bn, act, conv)
