"""A ConvTranspose's output geometry, exactly as onnxruntime (1.32, CPU) resolves it, per spatial axis:

    reach = (k - 1) * d + 1,   full = (size - 1) * s + reach          (the overlap-add of every input position)
    output_shape given:        total = max(0, full + output_padding - output_shape)
    auto_pad SAME_UPPER/LOWER: total = max(0, full + output_padding - size * s)
    otherwise:                 begin, end = pads (VALID: 0, 0)
    total split: SAME_UPPER puts the smaller half first, every other mode (NOTSET, SAME_LOWER, VALID) the larger.

The output is positions [begin, begin + out) of the full result extended with zeros at the end; onnxruntime
refuses an output_padding >= max(stride, dilation), an output shape that stride cannot reach from the input
((out + total - reach) // s + 1 != size) and an empty output. Kept apart from the front end so that it can be
tested against onnxruntime on its own (tests/test_conv_transpose.py)."""
from __future__ import annotations


def resolve(sizes, kernel, strides, dilations, output_padding, pads, auto_pad: str, output_shape):
    """-> (begins, ends, appended): crop `begins`/`ends` off the full result, then append `appended` zeros, per
    axis (at most one of ends/appended is non-zero). Raises ValueError naming the attribute at fault."""
    n = len(sizes)
    if output_shape is not None and len(output_shape) not in (n, n + 2):
        raise ValueError(f"attribute 'output_shape' {list(output_shape)} needs {n} values (one per spatial axis)")
    begins, ends, appended = [], [], []
    for i, (size, k, s, d, adj) in enumerate(zip(sizes, kernel, strides, dilations, output_padding)):
        if adj >= max(s, d):
            raise ValueError(f"attribute 'output_padding' {list(output_padding)}: entry {i} ({adj}) must be less "
                             f"than max(stride, dilation) = {max(s, d)}")
        reach = (k - 1) * d + 1
        full = (size - 1) * s + reach
        if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = output_shape[len(output_shape) - n + i] if output_shape is not None else size * s
            total = max(0, full + adj - out)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            if output_shape is None:
                out = full + adj - total
        else:
            head, tail = (0, 0) if auto_pad == "VALID" else (pads[i], pads[n + i])
            total = head + tail
            out = full + adj - total
        if out < 1:
            raise ValueError(f"the output would have {out} positions on spatial axis {i} (input {size}, kernel {k}, "
                             f"stride {s}, dilation {d}, output_padding {adj}, pads {head}+{total - head}); check "
                             "'pads' and 'output_shape'")
        if (out + total - reach) // s + 1 != size:
            if adj >= s:
                raise ValueError(f"attribute 'output_padding' {list(output_padding)}: entry {i} ({adj}) is too large "
                                 f"for stride {s} (onnxruntime needs it below the stride)")
            raise ValueError(f"attribute 'output_shape' {list(output_shape)} is inconsistent with the input: "
                             f"{out} positions on spatial axis {i} come from {(out + total - reach) // s + 1} input "
                             f"positions with kernel {k}, stride {s}, dilation {d}, but the input has {size}; "
                             f"give at most {full + s - 1} there")
        net = out - (full - head)          # > 0: zeros appended past the full result; < 0: cropped off its end
        begins.append(head)
        ends.append(max(0, -net))
        appended.append(max(0, net))
    return begins, ends, appended
